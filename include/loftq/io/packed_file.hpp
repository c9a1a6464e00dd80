#pragma once
// loftq's packed-weights file, on top of loftq/io/safetensors.hpp (needs
// nlohmann_json: link loftq::io).
//
// The packed file (model.packed.safetensors, "format": "loftq-packed" in its
// metadata) stores the true low-bit form of quantized weights, the layout of
// loftq::PackedMatrix (packed.hpp). For a weight <name> of rows x cols:
//
//   <name>.qcodes          U8, the bit-packed codes (packed_bytes(rows*cols, bits))
//   <name>.qscales         F32, one scale per block; or, with double quantization,
//   <name>.qscales_q       U8, one 8-bit code per block scale
//   <name>.qscales_absmax  F32, one per kDoubleQuantBlock scales
//   <name>.qscales_mean    F32, one value
//
// and in the metadata "<name>.bits", "<name>.shape" ("[rows, cols]"),
// "loftq.block_size", "loftq.quantizer", "loftq.scale", "loftq.codebooks"
// (bits -> normalized levels), "loftq.bits" (the width, or "mixed"),
// "loftq.layout" (the decoding rule in words) and, with double quantization,
// "loftq.double_quant" and "loftq.double_quant_block". PackedWriter writes it;
// read_packed() gives back every PackedMatrix, which loftq::dequantize() turns
// into the matrix Q.
//
// Every function throws loftq::Error: invalid_argument for a call that cannot
// work (a weight name without ".weight", a matrix of the wrong shape),
// parse_error for a file that does not follow the layout above.

#include <cstdint>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "loftq/double_quant.hpp"
#include "loftq/error.hpp"
#include "loftq/io/detail/strict_json.hpp"
#include "loftq/io/safetensors.hpp"
#include "loftq/packed.hpp"
#include "loftq/quantizer.hpp"

namespace loftq {
namespace io {

// One quantized weight of the packed file.
struct PackedTarget {
  std::string name;  // the weight's name in the base model
  std::uint64_t rows = 0, cols = 0;
  int bits = 4;
};

// What every weight of a packed file shares.
struct PackedSettings {
  Quantizer::Kind kind = Quantizer::Kind::normal_float;
  std::int64_t block_size = 64;
  bool scale_search = false;  // recorded as loftq.scale: "search" or "absmax"
  bool double_quant = false;  // 8-bit block scales (QLoRA's scheme, kDoubleQuantBlock)
};

// A target's tensors in file order.
inline std::vector<TensorDecl> packed_tensors(const PackedTarget& t, std::int64_t block_size, bool double_quant) {
  ::loftq::detail::require(block_size >= 1 && t.bits >= 1 && t.bits <= 8, Errc::invalid_argument,
                           "packed tensor '" + t.name + "': bad block size or bit width");
  const std::uint64_t numel = t.rows * t.cols, bs = static_cast<std::uint64_t>(block_size);
  const std::uint64_t nb = (numel + bs - 1) / bs;
  std::vector<TensorDecl> d = {{t.name + ".qcodes", Dtype::U8, {(numel * static_cast<std::uint64_t>(t.bits) + 7) / 8}}};
  if (double_quant) {
    const std::uint64_t dqb = static_cast<std::uint64_t>(kDoubleQuantBlock);
    d.push_back({t.name + ".qscales_q", Dtype::U8, {nb}});
    d.push_back({t.name + ".qscales_absmax", Dtype::F32, {(nb + dqb - 1) / dqb}});
    d.push_back({t.name + ".qscales_mean", Dtype::F32, {1}});
  } else {
    d.push_back({t.name + ".qscales", Dtype::F32, {nb}});
  }
  return d;
}

// The packed file's metadata (the format's self-description, see the top).
inline std::map<std::string, std::string> packed_metadata(const std::vector<PackedTarget>& targets,
                                                          const PackedSettings& s) {
  std::set<int> widths;
  for (const PackedTarget& t : targets) widths.insert(t.bits);
  auto quantizer = [&](int bits) { return Quantizer(s.kind, bits, static_cast<Eigen::Index>(s.block_size), true); };
  nlohmann::json codebooks = nlohmann::json::object();
  for (int b : widths) codebooks[std::to_string(b)] = quantizer(b).codebook();
  const int one = widths.size() == 1 ? *widths.begin() : 0;  // the width when all share one
  std::string layout =
      "codes: LSB-first bit stream over the row-major flattening, element e in stream bits [e*bits, (e+1)*bits) "
      "with bits = <name>.bits, stream bit s = bit s%8 of byte s/8; block b = elements [b*block_size, "
      "(b+1)*block_size); value = codebooks[bits][code] * scale[b]";
  layout += s.double_quant ? "; scale[b] = qscales_mean + (qscales_q[b] - 128) * (qscales_absmax[b/256] / 127) in "
                             "float32 (exact but for the final add)"
                           : "; scale[b] = qscales[b]";
  std::map<std::string, std::string> meta = {
      {"format", "loftq-packed"},
      {"loftq.bits", one ? std::to_string(one) : std::string("mixed")},
      {"loftq.block_size", std::to_string(s.block_size)},
      {"loftq.quantizer",
       one ? quantizer(one).name() : std::string(s.kind == Quantizer::Kind::uniform ? "uniform" : "nf")},
      {"loftq.scale", s.scale_search ? "search" : "absmax"},
      {"loftq.codebooks", codebooks.dump()},
      {"loftq.layout", layout}};
  // A reader of the single-width layout keeps working; a mixed file says
  // "mixed" there so such a reader fails instead of misreading it.
  if (one) meta["loftq.codebook"] = codebooks[std::to_string(one)].dump();
  if (s.double_quant) {
    meta["loftq.double_quant"] = "int8-absmax-mean";
    meta["loftq.double_quant_block"] = std::to_string(kDoubleQuantBlock);
  }
  for (const PackedTarget& t : targets) {
    meta[t.name + ".shape"] = nlohmann::json({t.rows, t.cols}).dump();
    meta[t.name + ".bits"] = std::to_string(t.bits);
  }
  return meta;
}

// Streams a packed file: targets declared up front, each written once.
class PackedWriter {
 public:
  PackedWriter(std::string path, const std::vector<PackedTarget>& targets, const PackedSettings& s) : s_(s) {
    std::vector<TensorDecl> d;
    for (const PackedTarget& t : targets) {
      ::loftq::detail::require(targets_.emplace(t.name, t).second, Errc::invalid_argument,
                               path + ": weight '" + t.name + "' listed twice");
      for (TensorDecl& x : packed_tensors(t, s.block_size, s.double_quant)) d.push_back(std::move(x));
    }
    file_ = std::make_unique<SafetensorsWriter>(std::move(path), d, packed_metadata(targets, s));
  }

  // Writes one target; P must match its declaration and the settings.
  void write(const std::string& name, const PackedMatrix& P) {
    const auto it = targets_.find(name);
    ::loftq::detail::require(it != targets_.end(), Errc::invalid_argument,
                             file_->path() + ": weight '" + name + "' was not declared");
    const PackedTarget& t = it->second;
    // A ggml type's blocks (sub-block scales, minimums, fp16 d) have no place
    // in this layout: they are stored as they are in GGUF.
    ::loftq::detail::require(P.ggml_format == GgmlFormat::none, Errc::invalid_argument,
                             file_->path() + ": '" + name + "' is in ggml's " + ggml_format_name(P.ggml_format) +
                                 " blocks, which the packed file does not store (write them to GGUF)");
    ::loftq::detail::require(static_cast<std::uint64_t>(P.rows) == t.rows &&
                                 static_cast<std::uint64_t>(P.cols) == t.cols && P.bits == t.bits &&
                                 P.block_size == s_.block_size && P.scale_mode == ScaleMode::absmax &&
                                 P.double_quantized() == s_.double_quant,
                             Errc::invalid_argument,
                             file_->path() + ": '" + name +
                                 "' does not match its declaration (shape, bits, block "
                                 "size, absmax scales, double quantization)");
    file_->write(name + ".qcodes", P.codes.data(), P.codes.size());
    if (s_.double_quant) {
      file_->write(name + ".qscales_q", P.scale_dq.codes.data(), P.scale_dq.codes.size());
      file_->write(name + ".qscales_absmax", P.scale_dq.absmax.data(), P.scale_dq.absmax.size() * 4);
      file_->write(name + ".qscales_mean", &P.scale_dq.mean, 4);
    } else {
      file_->write(name + ".qscales", P.scales.data(), P.scales.size() * 4);
    }
  }

  SafetensorsWriter& file() { return *file_; }
  void commit() { file_->commit(); }

 private:
  PackedSettings s_;
  std::map<std::string, PackedTarget> targets_;
  std::unique_ptr<SafetensorsWriter> file_;
};

// A packed file read back.
struct PackedFile {
  PackedSettings settings;
  std::map<std::string, PackedMatrix> tensors;  // by weight name
};

namespace detail {
inline std::int64_t packed_int(const std::map<std::string, std::string>& meta, const std::string& key,
                               const std::string& path, std::int64_t lo, std::int64_t hi) {
  const auto it = meta.find(key);
  if (it == meta.end()) ::loftq::detail::fail(Errc::parse_error, path + ": metadata lacks " + key);
  const std::string& v = it->second;
  std::int64_t x = 0;
  bool ok = !v.empty() && v.size() <= 18;
  for (char c : v) {
    ok = ok && c >= '0' && c <= '9';
    if (ok) x = 10 * x + (c - '0');
  }
  if (!ok || x < lo || x > hi)
    ::loftq::detail::fail(Errc::parse_error, path + ": metadata " + key + " = '" + v + "' is not an integer in " +
                                                 std::to_string(lo) + ".." + std::to_string(hi));
  return x;
}
}  // namespace detail

// Every weight of a packed file, with the scales the storage implies (the
// recovered ones when they are double-quantized).
inline PackedFile read_packed(const SafetensorsFile& f) {
  const std::string& path = f.path();
  auto bad = [&](const std::string& m) { ::loftq::detail::fail(Errc::parse_error, path + ": " + m); };
  const auto& meta = f.metadata();
  const auto fmt = meta.find("format");
  if (fmt == meta.end() || fmt->second != "loftq-packed") bad("not a loftq-packed file (metadata format)");
  PackedFile out;
  PackedSettings& s = out.settings;
  s.block_size = detail::packed_int(meta, "loftq.block_size", path, 1, std::int64_t{1} << 40);
  const auto q = meta.find("loftq.quantizer");
  if (q == meta.end()) bad("metadata lacks loftq.quantizer");
  if (q->second.compare(0, 2, "nf") == 0)
    s.kind = Quantizer::Kind::normal_float;
  else if (q->second.compare(0, 7, "uniform") == 0 && q->second.compare(0, 12, "uniform_asym") != 0)
    s.kind = Quantizer::Kind::uniform;
  else
    bad("unknown quantizer '" + q->second + "'");
  const auto sc = meta.find("loftq.scale");
  s.scale_search = sc != meta.end() && sc->second == "search";
  s.double_quant = meta.count("loftq.double_quant") != 0;
  if (s.double_quant && detail::packed_int(meta, "loftq.double_quant_block", path, 1, 1 << 30) != kDoubleQuantBlock)
    bad("double quantization block is not " + std::to_string(kDoubleQuantBlock));
  const auto cbs = meta.find("loftq.codebooks");
  if (cbs == meta.end()) bad("metadata lacks loftq.codebooks");
  // Bounded depth: metadata is input, and a deep tree would overflow the stack when destroyed.
  const nlohmann::json codebooks = detail::parse_json_strict(cbs->second, path + ": loftq.codebooks", 4);
  if (!codebooks.is_object()) bad("loftq.codebooks is not a JSON object");

  static const std::string bits_suffix = ".bits";
  for (const auto& kv : meta) {
    const std::string& key = kv.first;
    if (key.compare(0, 6, "loftq.") == 0 || key.size() <= bits_suffix.size() ||
        key.compare(key.size() - bits_suffix.size(), bits_suffix.size(), bits_suffix) != 0)
      continue;
    const std::string name = key.substr(0, key.size() - bits_suffix.size());
    PackedMatrix P;
    P.bits = static_cast<int>(detail::packed_int(meta, key, path, 1, 8));
    P.block_size = static_cast<Eigen::Index>(s.block_size);
    P.scale_mode = ScaleMode::absmax;
    const auto shp = meta.find(name + ".shape");
    if (shp == meta.end()) bad("metadata lacks " + name + ".shape");
    const nlohmann::json shape = detail::parse_json_strict(shp->second, path + ": " + name + ".shape", 2);
    if (!shape.is_array() || shape.size() != 2 || !shape[0].is_number_unsigned() || !shape[1].is_number_unsigned() ||
        shape[0].get<std::uint64_t>() > (std::uint64_t{1} << 31) ||
        shape[1].get<std::uint64_t>() > (std::uint64_t{1} << 31))
      bad(name + ".shape is not [rows, cols]");
    P.rows = static_cast<Eigen::Index>(shape[0].get<std::uint64_t>());
    P.cols = static_cast<Eigen::Index>(shape[1].get<std::uint64_t>());
    const std::string bk = std::to_string(P.bits);
    if (!codebooks.contains(bk) || !codebooks[bk].is_array() || codebooks[bk].size() != (std::size_t{1} << P.bits))
      bad("loftq.codebooks has no " + bk + "-bit codebook");
    for (const auto& v : codebooks[bk]) {
      if (!v.is_number()) bad("loftq.codebooks holds a non-number");
      P.codebook.push_back(v.get<float>());
    }
    const PackedTarget t{name, static_cast<std::uint64_t>(P.rows), static_cast<std::uint64_t>(P.cols), P.bits};
    for (const TensorDecl& d : packed_tensors(t, s.block_size, s.double_quant)) {
      const TensorInfo* ti = f.find(d.name);
      if (!ti) bad("missing tensor '" + d.name + "'");
      if (ti->dtype != d.dtype || ti->shape != d.shape) bad("tensor '" + d.name + "' has the wrong dtype or shape");
    }
    auto floats_of = [&](const std::string& n) { return f.read_float(f.at(n)); };
    P.codes = f.read_bytes(f.at(name + ".qcodes"));
    if (s.double_quant) {
      P.scale_dq.block_size = kDoubleQuantBlock;
      P.scale_dq.codes = f.read_bytes(f.at(name + ".qscales_q"));
      P.scale_dq.absmax = floats_of(name + ".qscales_absmax");
      P.scale_dq.mean = floats_of(name + ".qscales_mean")[0];
      P.scales = recover_scales(P.scale_dq);
    } else {
      P.scales = floats_of(name + ".qscales");
    }
    out.tensors.emplace(name, std::move(P));
  }
  return out;
}

}  // namespace io
}  // namespace loftq
