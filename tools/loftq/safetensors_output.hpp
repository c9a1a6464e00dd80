#pragma once
// The safetensors files of a `model` or `merge` output and their writers:
// the base model (mirroring the input's files, or shard_model.safetensors for
// a --shard run), the PEFT adapter, the packed codes.

#include "checkpoint_plan.hpp"
#include "staged_output.hpp"

#include <loftq/io/packed_file.hpp>
#include <loftq/io/peft.hpp>
#include <loftq/io/safetensors.hpp>

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace loftq_cli {

// A safetensors file of the output as its writer declares it.
struct OutputFileDecl {
  std::string name;  // in the output directory
  std::vector<io::TensorDecl> tensors;
  std::map<std::string, std::string> metadata;
};
// The base model files' declarations (see open_base_writers).
std::vector<OutputFileDecl> base_file_decls(const io::Checkpoint& ck, const std::vector<const Target*>& sel,
                                            bool shard_run, const Settings& s,
                                            const std::map<std::string, int>& bits_of);
// Before any work: throws InputError, naming `input`, when a safetensors file
// of the output would have a header over io::kMaxHeaderBytes, which the
// readers (this tool's as well) refuse: the output could not be read back.
void check_output_headers(const std::string& input, const io::Checkpoint& ck, const std::vector<const Target*>& sel,
                          bool shard_run, const Settings& s);

// The base model files: the targets `sel` with the declarations of
// s.bnb_nf4 (bitsandbytes' tensors) or of the input (dequantized Q).
struct BaseWriters {
  std::vector<std::unique_ptr<io::SafetensorsWriter>> files;  // one per input file (full), or one (shard)
  std::map<std::string, std::size_t> file_of;                 // tensor name -> index into files
};
BaseWriters open_base_writers(const StagedOutput& out, const io::Checkpoint& ck, const std::vector<const Target*>& sel,
                              bool shard_run, const Settings& s, const std::map<std::string, int>& bits_of);
std::unique_ptr<io::AdapterWriter> open_adapter_writer(const StagedOutput& out, const std::vector<const Target*>& sel,
                                                       const Settings& s, const std::map<std::string, int>& bits_of);
// Null unless s.packed.
std::unique_ptr<io::PackedWriter> open_packed_writer(const StagedOutput& out, const std::vector<const Target*>& sel,
                                                     const Settings& s, const std::map<std::string, int>& bits_of);

// All writers of a full output (merge).
struct Writers {
  BaseWriters base;
  std::unique_ptr<io::AdapterWriter> adapter;
  std::unique_ptr<io::PackedWriter> packed;

  void commit();
};
Writers open_writers(const StagedOutput& out, const io::Checkpoint& ck, const std::vector<const Target*>& sel,
                     const Settings& s, const std::map<std::string, int>& bits_of);

// Copies a mapped tensor in 16 MiB chunks to `out(data, n, offset)`,
// releasing the input pages as it goes.
void copy_tensor(const io::SafetensorsFile& f, const io::TensorInfo& t,
                 const std::function<void(const void*, std::uint64_t, std::uint64_t)>& out);
// ... into a writer, as `out_name`.
void copy_tensor(const io::SafetensorsFile& f, const io::TensorInfo& t, io::SafetensorsWriter& w,
                 const std::string& out_name);

}  // namespace loftq_cli
