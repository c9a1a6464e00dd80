#include "source_safetensors.hpp"

#include "errors.hpp"
#include "safetensors_output.hpp"

#include <algorithm>
#include <set>

namespace loftq_cli {

SafetensorsSource::SafetensorsSource(const Args& a)
    : input_(a.input),
      input_id_(a.input),
      ck_(a.input),
      side_(read_side_files(ck_, a.input, input_id_)),
      shard_k_(a.shard_k),
      shard_n_(a.shard_n) {
  check_same_input(input_, input_id_, ck_);
  if (!shard_run()) check_checkpoint_names(ck_, a.packed);
}

void SafetensorsSource::plan(const Args& a) {
  plan_ = plan_targets(ck_, a.modules, a.rank, input_);
  for (std::size_t i = 0; i < plan_.targets.size(); ++i)
    if (in_shard(i, shard_k_, shard_n_)) sel_.push_back(&plan_.targets[i]);
  for (std::size_t i = 0; i < sel_.size(); ++i) {
    const Target& t = *sel_[i];
    targets_.push_back({t.name, t.module, t.rows, t.cols, io::dtype_name(t.info->dtype),
                        ck_.file(t.file).path() + ": tensor '" + printable(t.name) + "'", i});
  }
}

std::vector<Step> SafetensorsSource::steps() const {
  std::vector<Step> out;
  if (shard_run()) {
    for (const ModelTarget& t : targets_) out.push_back({&t});
    return out;
  }
  // A full run writes the input's files, each in its data order.
  std::map<std::string, const ModelTarget*> by_name;
  for (const ModelTarget& t : targets_) by_name[t.name] = &t;
  std::size_t n = 0;
  for (std::size_t fi = 0; fi < ck_.num_files(); ++fi)
    for (const io::TensorInfo& t : ck_.file(fi).tensors()) {
      const auto it = by_name.find(t.name);
      out.push_back(it != by_name.end() ? Step{it->second} : Step{nullptr, n});
      ++n;
    }
  return out;
}

void SafetensorsSource::read(const ModelTarget& mt, float* W) const {
  const Target& t = target(mt);
  const io::SafetensorsFile& f = ck_.file(t.file);
  const io::TensorInfo& info = *t.info;
  const std::size_t es = io::dtype_size(info.dtype);
  const std::uint64_t per = (std::uint64_t(1) << 20) / es;  // elements per read
  std::vector<unsigned char> chunk(static_cast<std::size_t>(std::min<std::uint64_t>(per, info.numel) * es));
  for (std::uint64_t i = 0; i < info.numel; i += per) {
    const std::uint64_t n = std::min(per, info.numel - i);
    f.read_bytes(info, i * es, n * es, chunk.data());
    io::to_float(info.dtype, chunk.data(), static_cast<std::size_t>(n), W + i);
  }
}

void SafetensorsSource::copy(std::size_t copy, const CopyOut& out) const {
  std::size_t n = 0;
  for (std::size_t fi = 0; fi < ck_.num_files(); ++fi) {
    const io::SafetensorsFile& f = ck_.file(fi);
    if (copy >= n + f.tensors().size()) {
      n += f.tensors().size();
      continue;
    }
    const io::TensorInfo& t = f.tensors()[copy - n];
    copy_tensor(f, t, [&](const void* data, std::uint64_t k, std::uint64_t off) { out(t.name, fi, data, k, off); });
    return;
  }
}

void SafetensorsSource::describe(nlohmann::json& rep) const {
  rep["input_identity"] = checkpoint_identity(ck_);
  rep["target_modules_matched"] = plan_.modules;
  rep["num_targets"] = plan_.targets.size();
  if (shard_run()) rep["shard"] = {{"index", shard_k_}, {"count", shard_n_}};
}

std::string SafetensorsSource::summary_count() const {
  std::string s = std::to_string(sel_.size()) + " of " + std::to_string(plan_.targets.size()) + " target tensors";
  if (shard_run()) s += " (shard " + std::to_string(shard_k_) + "/" + std::to_string(shard_n_) + ")";
  return s;
}

}  // namespace loftq_cli
