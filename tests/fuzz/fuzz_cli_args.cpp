// libFuzzer target: the loftq tool's command line (tools/loftq/).
//
// Links the tool's option parser and commands as a library (run.sh builds
// everything in tools/loftq/ but main.cpp into one archive). The input is
// split at NUL/newline bytes into argv[1..]. Argument vectors that parse as
// `init` are then run for real, but with --input pointing at a tiny valid
// matrix and --output inside a private temp directory, iterations and
// threads clamped: this covers the hostile-value paths (bits, rank, block
// size, seed, ...) end to end. Every outcome must be one of the tool's own
// error types or loftq::Error.
#include "commands.hpp"
#include "errors.hpp"
#include "options.hpp"
#include "staged_output.hpp"

#include <loftq/error.hpp>
#include <loftq/io/npy.hpp>

#include <Eigen/Core>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include <unistd.h>

namespace {

namespace fs = std::filesystem;
using namespace loftq_cli;

struct Sandbox {
  std::string root, input, output;
  Sandbox() {
    char tmpl[] = "/tmp/loftq-fuzz-cli-XXXXXX";
    if (!::mkdtemp(tmpl)) std::abort();
    root = tmpl;
    input = root + "/W.npy";
    output = root + "/out/sub";
    Eigen::MatrixXf W(6, 5);
    for (Eigen::Index i = 0; i < W.rows(); ++i)
      for (Eigen::Index j = 0; j < W.cols(); ++j) W(i, j) = std::sin(static_cast<float>(3 * i + 7 * j + 1));
    loftq::io::write_npy(input, W);
  }
  ~Sandbox() {
    std::error_code ec;
    fs::remove_all(root, ec);
  }
};

Sandbox& sandbox() {
  static Sandbox s;
  return s;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size > 4096) return 0;
  std::vector<std::string> args;
  std::string cur;
  for (std::size_t i = 0; i < size; ++i) {
    const char c = static_cast<char>(data[i]);
    if (c == '\0' || c == '\n') {
      args.push_back(cur);
      cur.clear();
    } else {
      cur += c;
    }
  }
  if (!cur.empty() || args.empty()) args.push_back(cur);

  Parsed p;
  try {
    p = parse_args(args);
  } catch (const UsageError& e) {
    if (e.msg.empty()) std::abort();
    return 0;
  }
  if (p.action != Parsed::Action::run) {
    if (p.text.empty()) std::abort();
    return 0;
  }
  Args& a = p.args;
  // The parser's own postconditions.
  if (a.input.empty() || a.output.empty() || a.rank < 1 || a.iters < 1 || a.block_size < 1 || a.bits < 0 ||
      a.threads < 0 || a.threads > kMaxThreads)
    std::abort();
  if (a.command == "model" && (a.modules.empty() || (a.shard_n > 0 && (a.shard_k < 1 || a.shard_k > a.shard_n))))
    std::abort();
  if (a.command == "merge" && a.shards.empty()) std::abort();
  if (a.command != "init") return 0;  // model and merge need checkpoints; the fuzz_safetensors target reads those

  Sandbox& box = sandbox();
  a.input = box.input;
  a.output = box.output;
  a.iters = std::min(a.iters, 2);
  a.threads = std::min(a.threads, 2);
  a.quiet = true;
  try {
    (void)run_init(a);
  } catch (const InputError& e) {
    if (e.msg.empty()) std::abort();
  } catch (const loftq::Error&) {
  } catch (const Interrupted&) {
    std::abort();  // no signal was sent
  }
  reset_signal_state();  // run_init staged its output; the next run starts afresh
  std::error_code ec;
  fs::remove_all(box.root + "/out", ec);
  return 0;
}
