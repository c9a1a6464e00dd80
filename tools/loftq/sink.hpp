#pragma once
// The output side of `loftq model`: each sink writes one part of the output
// from the targets' results (and the tensors copied through). The run's
// sinks follow from the options: the base model (dequantized or bnb-nf4),
// the PEFT adapter and, with --packed, the packed codes; or, with --format
// gguf, llama.cpp's model and adapter. A new output format is a new Sink.

#include "compute.hpp"
#include "options.hpp"
#include "source.hpp"
#include "staged_output.hpp"

#include <nlohmann/json.hpp>

#include <map>
#include <memory>
#include <string>
#include <vector>

namespace loftq_cli {

class Sink {
 public:
  virtual ~Sink() = default;
  // Writes one target's result; runs on the writer thread, in step order.
  // A sink that is the last to need r.Q may release it.
  virtual void write(const ModelTarget& t, TargetResult& r) = 0;
  // A chunk of a tensor copied through; a sink that holds none ignores it.
  virtual void copy(const std::string& name, std::size_t file, const void* data, std::uint64_t n,
                    std::uint64_t offset) {
    (void)name, (void)file, (void)data, (void)n, (void)offset;
  }
  // What this output adds to a target's report entry; runs before write().
  virtual void annotate(nlohmann::json& entry, const ModelTarget& t, const TargetResult& r) const {
    (void)entry, (void)t, (void)r;
  }
  // Completes the files once every tensor is written.
  virtual void commit() = 0;
  // Writes the files besides the tensors (configs, indexes).
  virtual void finish(StagedOutput& out) { (void)out; }
};

// Throws InputError unless the options' output can be written from `src`
// (e.g. bnb-nf4 needs a config.json). Before any work.
void check_output(const Args& a, const Source& src);

// The sinks of the options' output, in the order they write each target.
// `bits_of`: each target's width.
std::vector<std::unique_ptr<Sink>> open_sinks(const Args& a, const Source& src, const StagedOutput& out,
                                              const std::map<std::string, int>& bits_of);

// The sinks themselves (sink_safetensors.cpp, sink_gguf.cpp), for open_sinks().
class SafetensorsSource;
class GgufSource;
struct Settings;
// model.safetensors (or its shards, or shard_model.safetensors of a --shard
// run): Q in the input's dtype, or the targets as bitsandbytes NF4.
std::unique_ptr<Sink> dequantized_sink(const SafetensorsSource& src, const StagedOutput& out, const Settings& s,
                                       const std::map<std::string, int>& bits_of);
std::unique_ptr<Sink> bnb_nf4_sink(const SafetensorsSource& src, const StagedOutput& out, const Settings& s,
                                   const std::map<std::string, int>& bits_of);
// adapter_model.safetensors (PEFT).
std::unique_ptr<Sink> peft_adapter_sink(const SafetensorsSource& src, const StagedOutput& out, const Settings& s,
                                        const std::map<std::string, int>& bits_of);
// model.packed.safetensors.
std::unique_ptr<Sink> packed_sink(const SafetensorsSource& src, const StagedOutput& out, const Settings& s,
                                  const std::map<std::string, int>& bits_of);
// model.gguf and adapter.gguf.
std::unique_ptr<Sink> gguf_sink(const Args& a, const GgufSource& src, const StagedOutput& out);
// Throws InputError, naming the input, when model.gguf or adapter.gguf would
// have more key-value pairs, tensors or header bytes (or a longer tensor
// name) than the GGUF reader accepts. Before any work.
void check_gguf_output(const Args& a, const GgufSource& src);

}  // namespace loftq_cli
