#pragma once
// The input side of `loftq model`: a source reads a model file and yields its
// targets (the weights to compute) and the tensors an output keeps as they
// are. The pipeline (cmd_model.cpp) computes each target (compute.hpp) and
// hands the result to the sinks (sink.hpp). A new input format is a new
// Source: open_source() picks it from the options.

#include "options.hpp"

#include <Eigen/Core>
#include <nlohmann/json.hpp>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace loftq_cli {

using RowMatrixF = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using ConstMapF = Eigen::Map<const RowMatrixF>;

// One weight W (rows x cols, PyTorch's out x in) the run computes.
struct ModelTarget {
  std::string name, module;  // the tensor, and the --target-modules entry it matched
  std::uint64_t rows = 0, cols = 0;
  std::string dtype;      // the input's type name, as the report records it
  std::string where;      // "<file>: tensor '<name>'", the start of its messages
  std::size_t index = 0;  // position in Source::targets()
  // --format gguf: the ggml format Q is stored in.
  loftq::GgmlFormat ggml = loftq::GgmlFormat::none;
};

// One step of the output, in the order the output is written: a target, or
// a tensor of the input copied through (`copy` is the source's own number).
struct Step {
  const ModelTarget* target = nullptr;
  std::size_t copy = 0;
};

// Receives the bytes of a tensor copied through: `file` is the input file
// holding it (0 for a single file), `offset` the position within the tensor.
using CopyOut = std::function<void(const std::string& name, std::size_t file, const void* data, std::uint64_t n,
                                   std::uint64_t offset)>;

class Source {
 public:
  virtual ~Source() = default;

  // Every file the run reads (the staging directory must not replace one).
  virtual std::vector<std::string> input_files() const = 0;
  // Finds the targets; throws InputError when there are none or one is unusable.
  virtual void plan(const Args& a) = 0;
  // The targets this run computes, in the order they are computed.
  const std::vector<ModelTarget>& targets() const { return targets_; }
  // The whole output in write order: the targets and the tensors copied through.
  virtual std::vector<Step> steps() const = 0;
  // W of target t as row-major float32 into `W` (t.rows * t.cols values).
  // Called on the prefetch thread.
  virtual void read(const ModelTarget& t, float* W) const = 0;
  // Passes the bytes of tensor `copy` of a Step to `out`, in chunks.
  virtual void copy(std::size_t copy, const CopyOut& out) const = 0;
  // What the report records about the input: input_identity,
  // target_modules_matched, num_targets, ...
  virtual void describe(nlohmann::json& report) const = 0;
  // The summary's "<count> target tensors ..." phrase, and notes printed
  // before it on stderr.
  virtual std::string summary_count() const = 0;
  virtual void print_notes() const {}

 protected:
  std::vector<ModelTarget> targets_;
};

// The source of --input: a GGUF file with --format gguf, else a safetensors checkpoint.
std::unique_ptr<Source> open_source(const Args& a);

}  // namespace loftq_cli
