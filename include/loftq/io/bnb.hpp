#pragma once
// The bitsandbytes 4-bit (NF4) layout of a pre-quantized checkpoint, as
// transformers saves a model loaded with BitsAndBytesConfig(load_in_4bit=True,
// bnb_4bit_quant_type="nf4") and loads back without quantizing again.
//
// Per quantized weight M.weight (rows x cols, n = rows * cols), the tensors of
// QuantState.as_dict(packed=True) under the prefix "M.weight.":
//
//   M.weight          U8 [(n + 1) / 2, 1]  codes of the row-major flattening,
//                     two per byte, element 2k in the high nibble of byte k
//                     (quantize_4bit: packed = q[::2] << 4 | q[1::2]); an odd
//                     n leaves the last low nibble 0.
//   M.weight.absmax   F32 [ceil(n / blocksize)]: one scale per blocksize
//                     consecutive elements of the flattening (blocks cross
//                     rows); with double quantization U8, the nested codes.
//   M.weight.quant_map F32 [16]: get_4bit_type("nf4"), code c decodes to
//                     quant_map[c] * absmax[e / blocksize] in fp32: LoftQ's
//                     Q bit for bit when "dtype" is float32. With float16 or
//                     bfloat16 the CUDA kernels round that product to the
//                     dtype, while the CPU default backend rounds quant_map
//                     to the dtype before multiplying: the two can differ in
//                     the last bit of the dtype.
//   M.weight.nested_absmax    F32 [ceil(n_blocks / 256)]   (double quant only)
//   M.weight.nested_quant_map F32 [256] create_dynamic_map() (double quant only)
//   M.weight.quant_state.bitsandbytes__nf4  U8: UTF-8 JSON, json.dumps of
//                     {"quant_type": "nf4", "blocksize": B, "dtype": "bfloat16",
//                      "shape": [rows, cols]} and, with double quantization,
//                     "nested_blocksize": 256, "nested_dtype": "float32",
//                     "nested_offset": <float>. The offset is only known once
//                     the weight is quantized, after the file's header is
//                     written, so that JSON is padded with trailing spaces to a
//                     fixed length (json.loads ignores them); without double
//                     quantization it is byte for byte what bitsandbytes writes.
//
// config.json carries BitsAndBytesConfig.to_dict() as "quantization_config".
// transformers converts every nn.Linear not in llm_int8_skip_modules, so the
// weights left unquantized are listed there (bnb_skip_modules).

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "loftq/bnb_double_quant.hpp"
#include "loftq/codebook.hpp"
#include "loftq/error.hpp"
#include "loftq/io/safetensors.hpp"
#include "loftq/packed.hpp"

namespace loftq {
namespace io {

// get_4bit_type("nf4") of bitsandbytes, as fp32: the library's NF4 codebook,
// which is those constants bit for bit (tests/test_codebook.cpp).
inline const std::vector<float>& bnb_nf4_table() { return normal_float_codebook(4); }

// The block sizes bitsandbytes' 4-bit kernels accept.
inline bool bnb_block_size_ok(std::int64_t b) {
  return b == 64 || b == 128 || b == 256 || b == 512 || b == 1024 || b == 2048 || b == 4096;
}

// torch's name of a model dtype, as str(torch.dtype) without "torch.".
inline std::string bnb_dtype_name(Dtype d) {
  switch (d) {
    case Dtype::F32:
      return "float32";
    case Dtype::F16:
      return "float16";
    case Dtype::BF16:
      return "bfloat16";
    default:
      break;
  }
  ::loftq::detail::fail(Errc::unsupported,
                        std::string("bitsandbytes 4-bit weights need an F32, F16 or BF16 model, not ") + dtype_name(d));
  return {};
}

struct BnbTarget {
  std::string name;  // M.weight
  std::uint64_t rows = 0, cols = 0;
  Dtype dtype = Dtype::BF16;  // the model's dtype, quant_state "dtype"
};

namespace detail {

constexpr const char* kBnbQuantStateSuffix = ".quant_state.bitsandbytes__nf4";
// Longest repr of a finite double ("-2.2250738585072014e-308").
constexpr std::size_t kBnbOffsetWidth = 24;

inline std::uint64_t bnb_numel(const BnbTarget& t) { return t.rows * t.cols; }
inline std::uint64_t bnb_blocks(std::uint64_t n, std::uint64_t b) { return (n + b - 1) / b; }

// json.dumps' repr of a float; nlohmann's shortest round-trip form agrees
// with Python's for the magnitudes of a mean scale (1e-4 .. 1e15).
inline std::string py_float(double x) {
  std::string s = nlohmann::json(x).dump();
  if (s.find_first_of(".eE") == std::string::npos) s += ".0";
  return s;
}

inline std::string bnb_quant_state(const BnbTarget& t, std::int64_t block_size, const BnbNestedScales* nested) {
  std::string j = "{\"quant_type\": \"nf4\", \"blocksize\": " + std::to_string(block_size) + ", \"dtype\": \"" +
                  bnb_dtype_name(t.dtype) + "\", \"shape\": [" + std::to_string(t.rows) + ", " +
                  std::to_string(t.cols) + "]";
  if (!nested) return j + "}";
  j += ", \"nested_blocksize\": " + std::to_string(kBnbNestedBlock) + ", \"nested_dtype\": \"float32\", " +
       "\"nested_offset\": ";
  const std::size_t fixed = j.size() + kBnbOffsetWidth + 1;
  if (nested->offset != nested->offset) ::loftq::detail::fail(Errc::non_finite, "bnb: nested offset is not finite");
  j += py_float(static_cast<double>(nested->offset)) + "}";
  j.resize(std::max(fixed, j.size()), ' ');
  return j;
}

}  // namespace detail

// The tensors that stand for target t, in name order.
inline std::vector<TensorDecl> bnb_nf4_tensors(const BnbTarget& t, std::int64_t block_size, bool double_quant) {
  ::loftq::detail::require(
      bnb_block_size_ok(block_size), Errc::unsupported,
      "bitsandbytes 4-bit block size must be 64, 128, ..., 4096 (got " + std::to_string(block_size) + ")");
  const std::uint64_t n = detail::bnb_numel(t), nb = detail::bnb_blocks(n, static_cast<std::uint64_t>(block_size));
  std::vector<TensorDecl> d;
  d.push_back({t.name, Dtype::U8, {(n + 1) / 2, 1}});
  d.push_back({t.name + ".absmax", double_quant ? Dtype::U8 : Dtype::F32, {nb}});
  if (double_quant) {
    d.push_back({t.name + ".nested_absmax", Dtype::F32, {detail::bnb_blocks(nb, kBnbNestedBlock)}});
    d.push_back({t.name + ".nested_quant_map", Dtype::F32, {256}});
  }
  d.push_back({t.name + ".quant_map", Dtype::F32, {16}});
  // Its length does not depend on the values (see the layout above).
  BnbNestedScales probe;
  const std::string qs = detail::bnb_quant_state(t, block_size, double_quant ? &probe : nullptr);
  d.push_back({t.name + detail::kBnbQuantStateSuffix, Dtype::U8, {qs.size()}});
  return d;
}

// Writes target t, quantized as P (NF4 over bitsandbytes' table, absmax
// scales, the int8 double quantization of double_quant.hpp absent), with
// `nested` the bitsandbytes double quantization of P's scales or null.
inline void write_bnb_nf4(SafetensorsWriter& w, const BnbTarget& t, const PackedMatrix& P,
                          const BnbNestedScales* nested) {
  using ::loftq::detail::require;
  const std::string& who = t.name;
  require(P.bits == 4 && P.codebook.size() == 16, Errc::unsupported,
          who + ": bitsandbytes has 4-bit NF4 only (got " + std::to_string(P.bits) + " bits)");
  const std::vector<float>& nf4 = bnb_nf4_table();
  require(std::equal(nf4.begin(), nf4.end(), P.codebook.begin()), Errc::unsupported,
          who + ": the codebook is not bitsandbytes' NF4 table");
  require(P.scale_mode == ScaleMode::absmax && !P.double_quantized(), Errc::unsupported,
          who + ": bitsandbytes needs absmax scales (without this project's int8 double quantization)");
  require(static_cast<std::uint64_t>(P.rows) == t.rows && static_cast<std::uint64_t>(P.cols) == t.cols,
          Errc::invalid_argument, who + ": the packed matrix has another shape");
  require(bnb_block_size_ok(P.block_size), Errc::unsupported,
          who + ": bitsandbytes 4-bit block size must be 64, 128, ..., 4096");
  if (nested) {
    require(nested->codes.size() == P.scales.size() &&
                nested->absmax.size() == detail::bnb_blocks(P.scales.size(), kBnbNestedBlock),
            Errc::invalid_argument, who + ": the nested scales do not match the blocks");
    for (std::size_t i = 0; i < P.scales.size(); ++i)
      require(nested->scale(i) == P.scales[i], Errc::invalid_argument,
              who + ": the scales are not the ones the nested quant state recovers");
  }
  const std::uint64_t n = detail::bnb_numel(t);
  {
    std::vector<std::uint8_t> buf;
    const std::uint64_t bytes = (n + 1) / 2, chunk = std::uint64_t(1) << 20;
    for (std::uint64_t b0 = 0; b0 < bytes; b0 += chunk) {
      const std::uint64_t b1 = std::min(bytes, b0 + chunk);
      buf.assign(static_cast<std::size_t>(b1 - b0), 0);
      for (std::uint64_t k = b0; k < b1; ++k) {
        const std::uint64_t e = 2 * k;
        unsigned v = static_cast<unsigned>(P.code(static_cast<Eigen::Index>(e))) << 4;
        if (e + 1 < n) v |= static_cast<unsigned>(P.code(static_cast<Eigen::Index>(e + 1)));
        buf[static_cast<std::size_t>(k - b0)] = static_cast<std::uint8_t>(v);
      }
      w.write(t.name, buf.data(), buf.size(), b0);
    }
  }
  if (nested) {
    w.write(t.name + ".absmax", nested->codes.data(), nested->codes.size());
    w.write(t.name + ".nested_absmax", nested->absmax.data(), nested->absmax.size() * sizeof(float));
    const std::vector<float>& map = bnb_dynamic_map();
    w.write(t.name + ".nested_quant_map", map.data(), map.size() * sizeof(float));
  } else {
    w.write(t.name + ".absmax", P.scales.data(), P.scales.size() * sizeof(float));
  }
  w.write(t.name + ".quant_map", nf4.data(), nf4.size() * sizeof(float));
  const std::string qs = detail::bnb_quant_state(t, P.block_size, nested);
  w.write(t.name + detail::kBnbQuantStateSuffix, qs.data(), qs.size());
}

// BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", ...).to_dict()
// as transformers writes it into config.json (keys sorted, as its
// to_json_string does).
inline nlohmann::json bnb_quantization_config(bool double_quant, Dtype compute_dtype,
                                              const std::vector<std::string>& skip_modules) {
  nlohmann::json q = nlohmann::json::object();
  q["_load_in_4bit"] = true;
  q["_load_in_8bit"] = false;
  q["bnb_4bit_compute_dtype"] = bnb_dtype_name(compute_dtype);
  q["bnb_4bit_quant_storage"] = "uint8";
  q["bnb_4bit_quant_type"] = "nf4";
  q["bnb_4bit_use_double_quant"] = double_quant;
  q["llm_int8_enable_fp32_cpu_offload"] = false;
  q["llm_int8_has_fp16_weight"] = false;
  q["llm_int8_skip_modules"] = skip_modules.empty() ? nlohmann::json(nullptr) : nlohmann::json(skip_modules);
  q["llm_int8_threshold"] = 6.0;
  q["load_in_4bit"] = true;
  q["load_in_8bit"] = false;
  q["quant_method"] = "bitsandbytes";
  return q;
}

// llm_int8_skip_modules for a checkpoint whose quantized modules are
// `quantized` and whose other 2-D weights belong to `others` (module paths).
// An explicit list replaces transformers' default (the output embedding), so
// "lm_head" is kept in it even when tied and absent from the file. Older
// transformers match an entry as a prefix followed by "." or the whole path,
// newer ones by re.match (a prefix) or a suffix: an entry that is a prefix or
// suffix of a quantized module would leave that module unconverted, so it is
// an error.
inline std::vector<std::string> bnb_skip_modules(const std::vector<std::string>& quantized,
                                                 std::vector<std::string> others) {
  auto last = [](const std::string& p) {
    const std::size_t dot = p.rfind('.');
    return dot == std::string::npos ? p : p.substr(dot + 1);
  };
  bool head_quantized = false;
  for (const std::string& q : quantized) head_quantized |= last(q) == "lm_head";
  if (!head_quantized) others.emplace_back("lm_head");
  std::sort(others.begin(), others.end());
  others.erase(std::unique(others.begin(), others.end()), others.end());
  for (const std::string& o : others)
    for (const std::string& q : quantized) {
      const bool prefix = q.compare(0, o.size(), o) == 0;
      const bool suffix = q.size() >= o.size() && q.compare(q.size() - o.size(), o.size(), o) == 0;
      if (prefix || suffix)
        ::loftq::detail::fail(Errc::unsupported,
                              "bitsandbytes output: transformers would also skip quantized module '" + q +
                                  "' through the unquantized module '" + o + "'; add it to the targets");
    }
  return others;
}

}  // namespace io
}  // namespace loftq
