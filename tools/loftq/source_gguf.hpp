#pragma once
// A GGUF file as a Source (--format gguf): the targets are the F32, F16 or
// BF16 tensors blk.N.<module>.weight whose module --target-modules names, by
// llama.cpp's name or by its Hugging Face one. A target whose rows are not
// whole ggml blocks is copied through unchanged (llama.cpp's fallback).
// With a mix (--quant q4_k_m, ...) each tensor's type is llama.cpp's
// (common/llama_quant_mix.hpp): the targets are LoftQ-quantized in theirs, the
// other tensors llama.cpp quantizes get a plain quantization in theirs, and a
// tensor whose type loftq does not write is copied through unchanged.

#include "source.hpp"

#include <loftq/io/gguf.hpp>

#include <loftq/quantizer.hpp>

#include <map>
#include <optional>
#include <string>
#include <vector>

namespace loftq_cli {

class GgufSource : public Source {
 public:
  explicit GgufSource(const Args& a);

  std::vector<std::string> input_files() const override { return {input_}; }
  void plan(const Args& a) override;
  std::vector<Step> steps() const override;
  void read(const ModelTarget& t, float* W) const override;
  void copy(std::size_t copy, const CopyOut& out) const override;
  void describe(nlohmann::json& report) const override;
  std::string summary_count() const override;
  void print_notes() const override;

  const loftq::io::GgufFile& file() const { return in_; }
  const std::string& architecture() const { return arch_; }
  // Whether the tensor of that name is a target this run quantizes.
  bool quantized(const std::string& name) const { return quantized_.count(name) != 0; }
  // The ggml type model.gguf stores tensor t in.
  std::uint32_t output_type(const loftq::io::GgufTensorInfo& t) const;
  // Whether model.gguf holds a quantized tensor (a target or a plain one).
  bool any_quantized() const { return !targets_.empty() || !plain_.empty(); }

 private:
  // With a mix: llama.cpp's reading of the model, refusing the models whose rules are not ported.
  loftq_common::LlamaMixModel mix_model() const;
  // The --quant mix's part of the report.
  nlohmann::json mix_json() const;

  std::string input_;
  loftq::io::GgufFile in_;
  std::string arch_;
  loftq::GgmlFormat quant_;
  std::optional<loftq_common::LlamaMix> mix_;
  loftq::QuantizeOptions plain_options_;
  std::map<std::string, std::size_t> quantized_;      // name -> index into targets()
  std::vector<std::string> matched_, kept_;           // modules that matched; targets copied through
  std::map<std::string, std::string> kept_why_;       // a kept target -> why
  std::map<std::string, loftq::GgmlFormat> plain_;    // with a mix: the other tensors quantized without LoftQ
  std::map<std::string, std::string> mix_unwritten_;  // with a mix: tensors kept -> llama.cpp's type for them
};

}  // namespace loftq_cli
