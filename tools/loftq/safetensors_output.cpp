#include "safetensors_output.hpp"

#include "errors.hpp"
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

std::vector<OutputFileDecl> base_file_decls(const io::Checkpoint& ck, const std::vector<const Target*>& sel,
                                            bool shard_run, const Settings& s,
                                            const std::map<std::string, int>& bits_of) {
  std::vector<OutputFileDecl> files;
  if (shard_run) {
    OutputFileDecl f{kShardModelFile, {}, with_bits({}, sel, bits_of)};
    for (const Target* t : sel) f.tensors.push_back({t->name, t->info->dtype, t->info->shape});
    files.push_back(std::move(f));
    return files;
  }
  std::map<std::string, const Target*> selected;
  for (const Target* t : sel) selected[t->name] = t;
  for (std::size_t f = 0; f < ck.num_files(); ++f) {
    std::vector<io::TensorDecl> d;
    std::vector<const Target*> here;
    for (const io::TensorInfo& t : ck.file(f).tensors()) {
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
    files.push_back({base_file_name(ck, f), std::move(d), with_bits(ck.file(f).metadata(), here, bits_of)});
  }
  return files;
}

namespace {

// AdapterWriter's declarations (io::adapter_tensors) and metadata.
OutputFileDecl adapter_file_decl(const std::vector<const Target*>& sel, const Settings& s,
                                 const std::map<std::string, int>& bits_of) {
  std::vector<io::LoraTarget> lora;
  for (const Target* t : sel) lora.push_back({t->name, t->rows, t->cols});
  return {kAdapterFile, io::adapter_tensors(lora, static_cast<std::uint64_t>(s.rank)), with_bits({}, sel, bits_of)};
}

std::vector<io::PackedTarget> packed_targets(const std::vector<const Target*>& sel,
                                             const std::map<std::string, int>& bits_of) {
  std::vector<io::PackedTarget> pt;
  for (const Target* t : sel) pt.push_back({t->name, t->rows, t->cols, bits_of.at(t->name)});
  return pt;
}

// bitsandbytes' nested scales are not this file's int8 scheme: with
// bnb-nf4 it holds the fp32 scales they recover, which decode to the same Q.
io::PackedSettings packed_settings(const Settings& s) {
  io::PackedSettings packing = s.packing;
  packing.double_quant = packing.double_quant && !s.bnb_nf4;
  return packing;
}

}  // namespace

void check_output_headers(const std::string& input, const io::Checkpoint& ck, const std::vector<const Target*>& sel,
                          bool shard_run, const Settings& s) {
  // The widths may not be chosen yet: every width (2..8) is one digit and 8 bits
  // gives the largest packed codes, so 8 for all bounds every header.
  std::map<std::string, int> bits_of;
  for (const Target* t : sel) bits_of[t->name] = 8;
  std::vector<OutputFileDecl> files = base_file_decls(ck, sel, shard_run, s, bits_of);
  files.push_back(adapter_file_decl(sel, s, bits_of));
  if (s.packed) {
    OutputFileDecl packed{kPackedFile, {}, {}};
    const std::vector<io::PackedTarget> pt = packed_targets(sel, bits_of);
    const io::PackedSettings packing = packed_settings(s);
    for (const io::PackedTarget& t : pt)
      for (io::TensorDecl& x : io::packed_tensors(t, packing.block_size, packing.double_quant))
        packed.tensors.push_back(std::move(x));
    packed.metadata = io::packed_metadata(pt, packing);
    files.push_back(std::move(packed));
  }
  for (const OutputFileDecl& f : files) {
    std::uint64_t n = 0;
    try {
      n = io::safetensors_header_size(f.tensors, f.metadata);
    } catch (const loftq::Error& e) {
      throw InputError{input + ": " + e.what()};
    } catch (const nlohmann::json::exception& e) {
      throw InputError{input + ": " + f.name + " could not be written: " + e.what()};
    }
    if (n > io::kMaxHeaderBytes)
      throw InputError{input + ": the output's " + f.name + " would have a header of " + std::to_string(n) +
                       " bytes, over the limit of " + std::to_string(io::kMaxHeaderBytes) +
                       " bytes of safetensors readers (this tool's included)"};
  }
}

BaseWriters open_base_writers(const StagedOutput& out, const io::Checkpoint& ck, const std::vector<const Target*>& sel,
                              bool shard_run, const Settings& s, const std::map<std::string, int>& bits_of) {
  BaseWriters w;
  if (shard_run) {
    for (const Target* t : sel) w.file_of[t->name] = 0;
  } else {
    for (std::size_t f = 0; f < ck.num_files(); ++f)
      for (const io::TensorInfo& t : ck.file(f).tensors()) w.file_of[t.name] = f;
  }
  for (const OutputFileDecl& f : base_file_decls(ck, sel, shard_run, s, bits_of))
    w.files.push_back(std::make_unique<io::SafetensorsWriter>(out.path(f.name).string(), f.tensors, f.metadata));
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
  return std::make_unique<io::PackedWriter>(out.path(kPackedFile).string(), packed_targets(sel, bits_of),
                                            packed_settings(s));
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
