// The GGUF sink (--format gguf): llama.cpp's two files.
//
//   DIR/model.gguf     every key-value pair and every tensor of the input, the
//                      targets replaced by LoftQ's Q in the --quant type
//   DIR/adapter.gguf   the LoRA factors as llama.cpp's --lora reads them
//                      (llama-adapter.cpp): general.type = adapter,
//                      adapter.type = lora, adapter.lora.alpha, the input's
//                      general.architecture, and per target
//                      <name>.lora_a, ne = [in, r] (PEFT's lora_A, r x in) and
//                      <name>.lora_b, ne = [r, out] (lora_B, out x r), in
//                      --adapter-type (F32 by default, as convert_lora_to_gguf.py);
//                      llama.cpp adds (alpha / r) * lora_b * lora_a * x
//
// model.gguf keeps the input's key-value pairs but general.file_type (the
// LLAMA_FTYPE of --quant or of its mix, so llama.cpp names the file's type rightly) and
// general.quantization_version. adapter.gguf takes the base's general.name.
// Both carry loftq.use_with_adapter: the base alone is further from the model
// than a plain quantization of it, since LoftQ moves part of W into the factors.

#include "errors.hpp"
#include "sink.hpp"
#include "source_gguf.hpp"

#include <loftq/ggml_format.hpp>
#include <loftq/io/gguf.hpp>
#include <loftq/io/detail/dtypes.hpp>
#include <loftq/io/peft.hpp>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <utility>

namespace loftq_cli {

namespace {

const char* const kUseWithAdapterKey = "loftq.use_with_adapter";
const char* const kUseWithAdapterNote =
    "LoftQ base and LoRA adapter: model.gguf is meant to run with adapter.gguf at scale 1.0 (llama.cpp: -m "
    "model.gguf --lora adapter.gguf); the base alone is further from the original model than a plain quantization";

// `kvs` with the pair of kv's key replaced in place, or kv appended.
void set_kv(std::vector<io::GgufKV>& kvs, io::GgufKV kv) {
  for (io::GgufKV& k : kvs)
    if (k.key == kv.key) {
      k = std::move(kv);
      return;
    }
  kvs.push_back(std::move(kv));
}

io::GgmlType adapter_ggml_type(const std::string& name) {
  if (name == "f16") return io::GgmlType::F16;
  if (name == "bf16") return io::GgmlType::BF16;
  if (name == "q8_0") return io::GgmlType::Q8_0;
  return io::GgmlType::F32;
}

// A lora factor as adapter.gguf stores it: its bytes, and the values llama.cpp reads back.
struct Stored {
  std::vector<unsigned char> bytes;
  loftq::RowMatrix<float> value;
};

// Q8_0 as ggml's quantize_row_q8_0_ref (the --scale absmax path of the ggml quantizer); F16 and BF16 rounded to
// nearest even, as ggml's converters. Rows are whole Q8_0 blocks (the constructor chose F16 otherwise).
Stored store(const loftq::RowMatrix<float>& M, io::GgmlType type, const std::string& what) {
  Stored s;
  const std::size_t n = static_cast<std::size_t>(M.size());
  s.value.resize(M.rows(), M.cols());
  if (type == io::GgmlType::F32) {
    s.value = M;
    s.bytes.resize(n * 4);
    std::memcpy(s.bytes.data(), M.data(), n * 4);
  } else if (type == io::GgmlType::F16 || type == io::GgmlType::BF16) {
    const bool f16 = type == io::GgmlType::F16;
    s.bytes.resize(n * 2);
    for (std::size_t i = 0; i < n; ++i) {
      const std::uint16_t h = f16 ? loftq::detail::float_to_half(M.data()[i]) : io::float_to_bf16(M.data()[i]);
      s.value.data()[i] = f16 ? loftq::detail::half_to_float(h) : io::bf16_to_float(h);
      s.bytes[2 * i] = static_cast<unsigned char>(h & 0xffu);
      s.bytes[2 * i + 1] = static_cast<unsigned char>(h >> 8);
    }
  } else {
    loftq::QuantizeOptions opt;
    opt.threads = 1;
    const loftq::PackedMatrix P = loftq::quantize(M, loftq::GgmlQuantizer(loftq::GgmlFormat::q8_0), opt);
    s.bytes = io::ggml_block_bytes(P, loftq::GgmlFormat::q8_0);
    s.value = loftq::dequantize<float>(P, 1);
  }
  if (!s.value.allFinite())
    throw InputError{what + ": the adapter does not fit in " +
                     io::GgufFile::type_name(static_cast<std::uint32_t>(type)) + " (try --adapter-type f32)"};
  return s;
}

class GgufSink : public Sink {
 public:
  GgufSink(const Args& a, const GgufSource& src, const StagedOutput& out)
      : alpha_(a.lora_alpha > 0 ? a.lora_alpha : static_cast<double>(a.rank)),
        type_a_(adapter_ggml_type(a.adapter_type)),
        // lora_b's rows are r long: not whole Q8_0 blocks unless r is a multiple of 32, when
        // convert_lora_to_gguf.py falls back to F16.
        type_b_(type_a_ == io::GgmlType::Q8_0 && a.rank % loftq::kGgmlBlock != 0 ? io::GgmlType::F16 : type_a_) {
    const auto ta = static_cast<std::uint32_t>(type_a_), tb = static_cast<std::uint32_t>(type_b_);
    const std::uint64_t r = static_cast<std::uint64_t>(a.rank);
    std::vector<io::GgufTensorDecl> base_decls, adapter_decls;
    for (const io::GgufTensorInfo& t : src.file().tensors()) {
      const bool quant = src.quantized(t.name);
      base_decls.push_back({t.name, t.ne, src.output_type(t)});
      if (quant) {
        adapter_decls.push_back({t.name + ".lora_a", {t.ne[0], r}, ta});
        adapter_decls.push_back({t.name + ".lora_b", {r, t.ne[1]}, tb});
      }
    }
    std::vector<io::GgufKV> base_kvs = src.file().kvs();
    if (src.any_quantized()) {  // with nothing quantized the file's type is the input's
      set_kv(base_kvs, io::gguf_kv_u32("general.file_type", a.mix ? static_cast<std::uint32_t>(*a.mix)
                                                                  : loftq::ggml_format_llama_ftype(a.quant)));
      set_kv(base_kvs, io::gguf_kv_u32("general.quantization_version", loftq::kGgmlQuantizationVersion));
    }
    set_kv(base_kvs, io::gguf_kv_string(kUseWithAdapterKey, kUseWithAdapterNote));
    std::string name;
    if (!src.file().string_value("general.name", name)) name = std::filesystem::path(a.input).stem().string();
    const std::vector<io::GgufKV> adapter_kvs = {io::gguf_kv_string("general.architecture", src.architecture()),
                                                 io::gguf_kv_string("general.type", "adapter"),
                                                 io::gguf_kv_string("general.name", name),
                                                 io::gguf_kv_string("adapter.type", "lora"),
                                                 io::gguf_kv_f32("adapter.lora.alpha", static_cast<float>(alpha_)),
                                                 io::gguf_kv_string(kUseWithAdapterKey, kUseWithAdapterNote)};
    try {
      base_ = std::make_unique<io::GgufWriter>(out.path("model.gguf").string(), base_kvs, base_decls);
      adapter_ = std::make_unique<io::GgufWriter>(out.path("adapter.gguf").string(), adapter_kvs, adapter_decls);
    } catch (const loftq::Error& e) {
      throw InputError{std::string("--format gguf: ") + e.what()};
    }
  }

  void write(const ModelTarget& t, TargetResult& res) override {
    const std::vector<unsigned char> blocks = io::ggml_block_bytes(res.r.packed, t.ggml);
    base_->write(t.name, blocks.data(), blocks.size());
    const Factors f = factors(t.where, res);
    adapter_->write(t.name + ".lora_a", f.a.bytes.data(), f.a.bytes.size());
    adapter_->write(t.name + ".lora_b", f.b.bytes.data(), f.b.bytes.size());
  }
  void copy(const std::string& name, std::size_t, const void* data, std::uint64_t n, std::uint64_t offset) override {
    base_->write(name, data, n, offset);
  }
  void annotate(nlohmann::json& entry, const ModelTarget& t, const TargetResult& res) const override {
    entry["ggml_type"] = io::GgufFile::type_name(static_cast<std::uint32_t>(io::ggml_type_of(t.ggml)));
    entry["adapter_type"] = {io::GgufFile::type_name(static_cast<std::uint32_t>(type_a_)),
                             io::GgufFile::type_name(static_cast<std::uint32_t>(type_b_))};
    // What storing the factors in that type adds: ||B~ A~ - B A|| / ||B A|| of llama.cpp's lora_b lora_a, with
    // B~ A~ - B A = dB A~ + B dA and ||X Y||^2 = tr((X^T X)(Y Y^T)): r x r products, never an out x in matrix.
    const Factors f = factors(t.where, res);
    const auto peft = loftq::to_peft(res.r, alpha_);
    const Eigen::MatrixXd A = peft.lora_A.cast<double>(), B = peft.lora_B.cast<double>();
    const Eigen::MatrixXd As = f.a.value.cast<double>(), dB = f.b.value.cast<double>() - B, dA = As - A;
    const double d2 = ((dB.transpose() * dB) * (As * As.transpose())).trace() +
                      2 * ((dB.transpose() * B) * (dA * As.transpose())).trace() +
                      ((B.transpose() * B) * (dA * dA.transpose())).trace();
    const double n2 = ((B.transpose() * B) * (A * A.transpose())).trace();
    entry["adapter_rounding_rel_err"] = n2 > 0 ? std::sqrt(std::max(0.0, d2) / n2) : 0.0;
  }
  void commit() override {
    base_->commit();
    adapter_->commit();
  }

 private:
  struct Factors {
    Stored a, b;
  };
  Factors factors(const std::string& where, const TargetResult& res) const {
    const auto peft = loftq::to_peft(res.r, alpha_);
    if (!peft.lora_A.allFinite() || !peft.lora_B.allFinite())
      throw InputError{where + ": the adapter at lora_alpha " + std::to_string(alpha_) + " is not finite"};
    return {store(peft.lora_A.cast<float>(), type_a_, where), store(peft.lora_B.cast<float>(), type_b_, where)};
  }

  double alpha_;
  io::GgmlType type_a_, type_b_;
  std::unique_ptr<io::GgufWriter> base_, adapter_;
};

}  // namespace

std::unique_ptr<Sink> gguf_sink(const Args& a, const GgufSource& src, const StagedOutput& out) {
  return std::make_unique<GgufSink>(a, src, out);
}

}  // namespace loftq_cli
