#pragma once
// A safetensors checkpoint as a Source: one file, a directory, or a sharded
// set with its index. With --shard K/N it yields only that shard's targets
// and copies nothing through.

#include "checkpoint_plan.hpp"
#include "source.hpp"

#include <loftq/io/safetensors.hpp>

#include <string>
#include <vector>

namespace loftq_cli {

class SafetensorsSource : public Source {
 public:
  // Opens the checkpoint, reads its side files and refuses file names an
  // output would clash with, or an input replaced while being opened.
  explicit SafetensorsSource(const Args& a);

  std::vector<std::string> input_files() const override { return checkpoint_inputs(ck_, input_); }
  void plan(const Args& a) override;
  std::vector<Step> steps() const override;
  void read(const ModelTarget& t, float* W) const override;
  void copy(std::size_t copy, const CopyOut& out) const override;
  void describe(nlohmann::json& report) const override;
  std::string summary_count() const override;

  const io::Checkpoint& checkpoint() const { return ck_; }
  const std::string& input() const { return input_; }
  const SideFiles& side_files() const { return side_; }
  const Plan& all() const { return plan_; }
  // The checkpoint's view of each of targets().
  const Target& target(const ModelTarget& t) const { return *sel_[t.index]; }
  const std::vector<const Target*>& selected() const { return sel_; }
  bool shard_run() const { return shard_n_ > 0; }

 private:
  std::string input_;
  InputIdentity input_id_;  // taken before ck_ is opened
  io::Checkpoint ck_;
  SideFiles side_;
  int shard_k_ = 0, shard_n_ = 0;
  Plan plan_;
  std::vector<const Target*> sel_;
  std::vector<const io::TensorInfo*> tensors_;  // every tensor, in steps() numbering
};

}  // namespace loftq_cli
