#pragma once
// What `model` and `merge` share: the targets of a checkpoint, the settings
// every output records, the output files and their writers, progress.

#include "options.hpp"
#include "staged_output.hpp"

#include <loftq/io/bnb.hpp>
#include <loftq/io/packed_file.hpp>
#include <loftq/io/peft.hpp>
#include <loftq/io/safetensors.hpp>

#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace loftq_cli {

constexpr const char* kShardModelFile = "shard_model.safetensors";
constexpr const char* kAdapterFile = "adapter_model.safetensors";
constexpr const char* kPackedFile = "model.packed.safetensors";
constexpr const char* kReportFile = "loftq_report.json";

struct Target {
  std::string name, module;  // the weight, and the --target-modules entry it matched
  std::size_t file = 0;      // index into the checkpoint's files
  const io::TensorInfo* info = nullptr;
  std::uint64_t rows = 0, cols = 0;
};

struct Plan {
  std::vector<Target> targets;       // all targets, sorted by name
  std::vector<std::string> modules;  // modules that matched, in the requested order
};

// The targets of `ck`: 2-D float tensors <prefix>.<module>.weight. Throws
// InputError when there are none, or one cannot take `rank`.
Plan plan_targets(const io::Checkpoint& ck, const std::vector<std::string>& modules, Eigen::Index rank,
                  const std::string& input);

// Whether target i (0-based, in name order) belongs to shard K of N (1-based).
inline bool in_shard(std::size_t i, int k, int n) {
  return n <= 1 || static_cast<int>(i % static_cast<std::size_t>(n)) == k - 1;
}

// The settings every output of a run records (loftq_report.json "settings")
// and a merge checks its shards against.
struct Settings {
  nlohmann::json j;  // bits (null with a budget), rank, iters, quantizer, block_size, scale, start, double_quant,
                     // lora_alpha, svd, seed, target_modules, packed[, bits_budget][, keep_best]
  int bits = 0;
  std::int64_t rank = 0;
  double alpha = 0;
  bool packed = false;
  bool bnb_nf4 = false;  // targets in the base as bitsandbytes NF4
  std::vector<std::string> modules;
  io::PackedSettings packing;

  static Settings of(const Args& a);
  // From a shard's report; throws InputError unless every field is usable.
  static Settings from_report(const nlohmann::json& j);
};

// The input as the run found it, taken before the checkpoint is opened: its
// path's identity (device and inode) and the directory holding its side files,
// held open. The side files are read through that directory, and
// check_same_input() after that refuses an input replaced in between (renamed
// over, or exchanged), even one put back since: every file the checkpoint
// holds open must be the entry of its name in that directory, and the path
// must still name it. So the tensors and the side files are those of one input.
class InputIdentity {
 public:
  explicit InputIdentity(const std::string& input);
  InputIdentity(const InputIdentity&) = delete;
  InputIdentity& operator=(const InputIdentity&) = delete;
  ~InputIdentity();
  int dir_fd() const { return dir_fd_; }  // -1 when it could not be opened

  std::uint64_t dev = 0, ino = 0;  // of the input path
  bool known = false;

 private:
  int dir_fd_ = -1;
  std::uint64_t dir_dev_ = 0, dir_ino_ = 0;
  std::string dir_;
  friend void check_same_input(const std::string&, const InputIdentity&, const io::Checkpoint&);
};
void check_same_input(const std::string& input, const InputIdentity& before, const io::Checkpoint& ck);

// The config and tokenizer files next to a checkpoint, read once when the
// input is opened (read_side_files), so an output carries the ones of the
// input its tensors come from, whatever happens to the input during the run.
struct SideFiles {
  std::vector<std::pair<std::string, std::string>> files;  // name, bytes
  nlohmann::json config;                                   // config.json parsed; null when absent
};
// Refuses (InputError) a config.json that does not parse (strict JSON, 64
// levels, 16 MiB), a side file over 256 MiB, and one that is a symbolic link
// leading out of the input directory (a Hugging Face cache snapshot's links
// into its blobs/ excepted).
SideFiles read_side_files(const io::Checkpoint& ck, const std::string& input, const InputIdentity& id);

// The index of a full output of a sharded input: the input's, with the
// bitsandbytes tensors of `targets` when s.bnb_nf4.
std::string output_index(const io::Checkpoint& ck, const Settings& s, const std::vector<Target>& targets);
// Before any work: throws InputError, naming `input`, when that index would
// exceed io::kMaxHeaderBytes, which the index reader refuses.
void check_output_index(const io::Checkpoint& ck, const std::string& input, const Settings& s,
                        const std::vector<Target>& targets);

// The files a full (unsharded or merged) output has besides the tensors:
// adapter_config.json, the index of a sharded input, config and tokenizer files.
// With s.bnb_nf4, config.json gains the quantization_config of `targets`
// (required then) and the index lists their bitsandbytes tensors.
void write_full_extras(StagedOutput& out, const io::Checkpoint& ck, const std::string& input, const SideFiles& side,
                       const Settings& s, const std::vector<std::string>& modules, const std::vector<Target>& targets);

// The bitsandbytes description of a target.
io::BnbTarget bnb_target(const Target& t);

// Throws InputError unless a bnb-nf4 output of `targets` can be written: a
// config.json next to the input, F32, F16 or BF16 targets, and skip modules
// that leave every target quantized.
void check_bnb_output(const io::Checkpoint& ck, const std::string& input, const SideFiles& side, const Settings& s,
                      const std::vector<Target>& targets);

// The name of output file i of a full run: the input's name when sharded.
std::string base_file_name(const io::Checkpoint& ck, std::size_t i);

// Every file a command reads from the checkpoint at `input`: its tensor
// files, the index, and the config and tokenizer files an output copies.
std::vector<std::string> checkpoint_inputs(const io::Checkpoint& ck, const std::string& input);

// Refuses a checkpoint with a tensor file named like one of the files a full
// output writes besides the checkpoint's own (adapter, report, config...).
void check_checkpoint_names(const io::Checkpoint& ck, bool packed);

// A fingerprint of the checkpoint, recorded in every report, which a merge
// compares: the index, every file's name, size, metadata and tensor table,
// and the first, middle and last 64 bytes of every tensor's data. It tells
// checkpoints apart that differ in layout or in their weights; it is not a
// hash of every byte.
std::string checkpoint_identity(const io::Checkpoint& ck);

// Throws InputError when a float tensor of `f` holds a NaN or an infinity.
void check_finite(const io::SafetensorsFile& f, const io::TensorInfo& t);

}  // namespace loftq_cli
