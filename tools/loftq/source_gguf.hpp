#pragma once
// A GGUF file as a Source (--format gguf): the targets are the F32, F16 or
// BF16 tensors blk.N.<module>.weight whose module --target-modules names, by
// llama.cpp's name or by its Hugging Face one. A target whose rows are not
// whole ggml blocks is copied through unchanged (llama.cpp's fallback).

#include "source.hpp"

#include <loftq/io/gguf.hpp>

#include <map>
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

 private:
  std::string input_;
  loftq::io::GgufFile in_;
  std::string arch_;
  loftq::GgmlFormat quant_;
  std::map<std::string, std::size_t> quantized_;  // name -> index into targets()
  std::vector<std::string> matched_, kept_;       // modules that matched; targets copied through
};

}  // namespace loftq_cli
