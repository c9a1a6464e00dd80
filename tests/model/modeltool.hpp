// What the two units of loftq_model_tool (modeltool.cpp: checkpoints and the
// full-output check; modeltool_verify.cpp: the packed, bnb-nf4 and budget
// verifiers) share.
#pragma once

#include <loftq/io/safetensors.hpp>

#include <Eigen/Core>
#include <nlohmann/json.hpp>
#include <string>

namespace modeltool {

namespace st = loftq::io;
using RowMatrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

struct Fail {
  std::string msg;
};
inline void require(bool ok, const std::string& msg) {
  if (!ok) throw Fail{msg};
}

// A JSON file, parsed.
nlohmann::json read_json(const std::string& path);
// Whether `name` is one of the linears loftq model adapts by default.
bool is_target(const std::string& name, const st::TensorInfo& t);

// The verifiers of modeltool_verify.cpp (usage: modeltool.cpp); 0 on success.
int cmd_packed(const std::string& out);
int cmd_bnb(const std::string& input, const std::string& out, const std::string& ref);
int cmd_budget(const std::string& input, const std::string& out, const std::string& ref, double budget);

}  // namespace modeltool
