#include "safetensors_output.hpp"

#include "staged_output.hpp"

#include <loftq/io/bnb.hpp>

#include <algorithm>

namespace loftq_cli {

namespace {

std::map<std::string, std::string> with_format(std::map<std::string, std::string> m) {
  if (!m.count("format")) m["format"] = "pt";
  return m;
}

// The targets' bit widths go into each file that holds them ({"<tensor name>": bits}).
std::map<std::string, std::string> with_bits(std::map<std::string, std::string> meta,
                                             const std::vector<const Target*>& ts,
                                             const std::map<std::string, int>& bits_of) {
  if (!ts.empty()) {
    nlohmann::json j = nlohmann::json::object();
    for (const Target* t : ts) j[t->name] = bits_of.at(t->name);
    meta["loftq.tensor_bits"] = j.dump();
  }
  return with_format(std::move(meta));
}

}  // namespace

BaseWriters open_base_writers(const StagedOutput& out, const io::Checkpoint& ck, const std::vector<const Target*>& sel,
                              bool shard_run, const Settings& s, const std::map<std::string, int>& bits_of) {
  BaseWriters w;
  if (shard_run) {
    std::vector<io::TensorDecl> d;
    for (const Target* t : sel) {
      d.push_back({t->name, t->info->dtype, t->info->shape});
      w.file_of[t->name] = 0;
    }
    w.files.push_back(
        std::make_unique<io::SafetensorsWriter>(out.path(kShardModelFile).string(), d, with_bits({}, sel, bits_of)));
    return w;
  }
  std::map<std::string, const Target*> selected;
  for (const Target* t : sel) selected[t->name] = t;
  for (std::size_t f = 0; f < ck.num_files(); ++f) {
    std::vector<io::TensorDecl> d;
    std::vector<const Target*> here;
    for (const io::TensorInfo& t : ck.file(f).tensors()) {
      w.file_of[t.name] = f;
      const auto it = selected.find(t.name);
      if (it != selected.end()) here.push_back(it->second);
      if (it != selected.end() && s.bnb_nf4) {
        for (io::TensorDecl& x :
             io::bnb_nf4_tensors(bnb_target(*it->second), s.packing.block_size, s.packing.double_quant))
          d.push_back(std::move(x));
      } else {
        d.push_back({t.name, t.dtype, t.shape});
      }
    }
    w.files.push_back(std::make_unique<io::SafetensorsWriter>(out.path(base_file_name(ck, f)).string(), d,
                                                              with_bits(ck.file(f).metadata(), here, bits_of)));
  }
  return w;
}

std::unique_ptr<io::AdapterWriter> open_adapter_writer(const StagedOutput& out, const std::vector<const Target*>& sel,
                                                       const Settings& s, const std::map<std::string, int>& bits_of) {
  std::vector<io::LoraTarget> lora;
  for (const Target* t : sel) lora.push_back({t->name, t->rows, t->cols});
  return std::make_unique<io::AdapterWriter>(out.path(kAdapterFile).string(), lora, static_cast<std::uint64_t>(s.rank),
                                             with_bits({}, sel, bits_of));
}

std::unique_ptr<io::PackedWriter> open_packed_writer(const StagedOutput& out, const std::vector<const Target*>& sel,
                                                     const Settings& s, const std::map<std::string, int>& bits_of) {
  if (!s.packed) return nullptr;
  std::vector<io::PackedTarget> pt;
  for (const Target* t : sel) pt.push_back({t->name, t->rows, t->cols, bits_of.at(t->name)});
  // bitsandbytes' nested scales are not this file's int8 scheme: with
  // bnb-nf4 it holds the fp32 scales they recover, which decode to the same Q.
  io::PackedSettings packing = s.packing;
  packing.double_quant = packing.double_quant && !s.bnb_nf4;
  return std::make_unique<io::PackedWriter>(out.path(kPackedFile).string(), pt, packing);
}

void Writers::commit() {
  for (auto& w : base.files) w->commit();
  adapter->commit();
  if (packed) packed->commit();
}

Writers open_writers(const StagedOutput& out, const io::Checkpoint& ck, const std::vector<const Target*>& sel,
                     const Settings& s, const std::map<std::string, int>& bits_of) {
  Writers w;
  w.base = open_base_writers(out, ck, sel, /*shard_run=*/false, s, bits_of);
  w.adapter = open_adapter_writer(out, sel, s, bits_of);
  w.packed = open_packed_writer(out, sel, s, bits_of);
  return w;
}

void copy_tensor(const io::SafetensorsFile& f, const io::TensorInfo& t,
                 const std::function<void(const void*, std::uint64_t, std::uint64_t)>& out) {
  const std::uint64_t chunk = std::uint64_t(16) << 20;
  std::vector<unsigned char> buf(static_cast<std::size_t>(std::min(chunk, t.nbytes())));
  std::uint64_t off = 0;
  do {
    const std::uint64_t n = std::min(chunk, t.nbytes() - off);
    f.read_bytes(t, off, n, buf.data());
    out(buf.data(), n, off);
    off += n;
    check_interrupt();
  } while (off < t.nbytes());
}

void copy_tensor(const io::SafetensorsFile& f, const io::TensorInfo& t, io::SafetensorsWriter& w,
                 const std::string& out_name) {
  copy_tensor(f, t, [&](const void* data, std::uint64_t n, std::uint64_t off) { w.write(out_name, data, n, off); });
}

}  // namespace loftq_cli
