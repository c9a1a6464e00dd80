// The GGUF sink (--format gguf): llama.cpp's two files.
//
//   DIR/model.gguf     every key-value pair and every tensor of the input, the
//                      targets replaced by LoftQ's Q in the --quant type
//   DIR/adapter.gguf   the LoRA factors as llama.cpp's --lora reads them
//                      (llama-adapter.cpp): general.type = adapter,
//                      adapter.type = lora, adapter.lora.alpha, the input's
//                      general.architecture, and per target
//                      <name>.lora_a, ne = [in, r] (PEFT's lora_A, r x in) and
//                      <name>.lora_b, ne = [r, out] (lora_B, out x r), F32;
//                      llama.cpp adds (alpha / r) * lora_b * lora_a * x
//
// model.gguf keeps the input's key-value pairs but general.file_type (the
// LLAMA_FTYPE of --quant, so llama.cpp names the file's type rightly) and
// general.quantization_version. adapter.gguf takes the base's general.name.
// Both carry loftq.use_with_adapter: the base alone is further from the model
// than a plain quantization of it, since LoftQ moves part of W into the factors.

#include "errors.hpp"
#include "sink.hpp"
#include "source_gguf.hpp"

#include <loftq/ggml_format.hpp>
#include <loftq/io/gguf.hpp>
#include <loftq/io/peft.hpp>

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

template <class Matrix>
void write_row_major(io::GgufWriter& w, const std::string& name, const Matrix& M) {
  const loftq::RowMatrix<float> R = M.template cast<float>();
  w.write(name, R.data(), static_cast<std::uint64_t>(R.size()) * sizeof(float));
}

class GgufSink : public Sink {
 public:
  GgufSink(const Args& a, const GgufSource& src, const StagedOutput& out)
      : quant_(a.quant), alpha_(a.lora_alpha > 0 ? a.lora_alpha : static_cast<double>(a.rank)) {
    const auto qtype = static_cast<std::uint32_t>(io::ggml_type_of(a.quant));
    const auto f32 = static_cast<std::uint32_t>(io::GgmlType::F32);
    const std::uint64_t r = static_cast<std::uint64_t>(a.rank);
    std::vector<io::GgufTensorDecl> base_decls, adapter_decls;
    for (const io::GgufTensorInfo& t : src.file().tensors()) {
      const bool quant = src.quantized(t.name);
      base_decls.push_back({t.name, t.ne, quant ? qtype : t.type});
      if (quant) {
        adapter_decls.push_back({t.name + ".lora_a", {t.ne[0], r}, f32});
        adapter_decls.push_back({t.name + ".lora_b", {r, t.ne[1]}, f32});
      }
    }
    std::vector<io::GgufKV> base_kvs = src.file().kvs();
    if (!adapter_decls.empty()) {  // with no target quantized the file's type is the input's
      set_kv(base_kvs, io::gguf_kv_u32("general.file_type", loftq::ggml_format_llama_ftype(a.quant)));
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
    const std::vector<unsigned char> blocks = io::ggml_block_bytes(res.r.packed, quant_);
    base_->write(t.name, blocks.data(), blocks.size());
    const auto peft = loftq::to_peft(res.r, alpha_);
    if (!peft.lora_A.allFinite() || !peft.lora_B.allFinite())
      throw InputError{t.where + ": the adapter at lora_alpha " + std::to_string(alpha_) + " is not finite"};
    write_row_major(*adapter_, t.name + ".lora_a", peft.lora_A);
    write_row_major(*adapter_, t.name + ".lora_b", peft.lora_B);
  }
  void copy(const std::string& name, std::size_t, const void* data, std::uint64_t n, std::uint64_t offset) override {
    base_->write(name, data, n, offset);
  }
  void annotate(nlohmann::json& entry) const override {
    entry["ggml_type"] = io::GgufFile::type_name(static_cast<std::uint32_t>(io::ggml_type_of(quant_)));
  }
  void commit() override {
    base_->commit();
    adapter_->commit();
  }

 private:
  loftq::GgmlFormat quant_;
  double alpha_;
  std::unique_ptr<io::GgufWriter> base_, adapter_;
};

}  // namespace

std::unique_ptr<Sink> gguf_sink(const Args& a, const GgufSource& src, const StagedOutput& out) {
  return std::make_unique<GgufSink>(a, src, out);
}

}  // namespace loftq_cli
