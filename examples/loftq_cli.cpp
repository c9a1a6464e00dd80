// loftq: the command-line tool.
//
//   loftq init --input W.npy --output DIR [--bits 4] [--rank 16] [--iters 5] ...
//
// reads one 2-D weight matrix from a .npy file, runs loftq::initialize and
// writes DIR/Q.npy, DIR/A.npy, DIR/B.npy and DIR/report.json (see usage_text).
//
//   loftq model --input PATH --output DIR ...   (whole safetensors checkpoints)
//   loftq merge --input PATH --shards D1,D2,... --output DIR
//
// LoftQ-initialize every target weight of a checkpoint, streaming, into a
// PEFT adapter, a dequantized base model, optional packed codes and a report;
// merge assembles the outputs of `model --shard K/N` runs. See the section
// "loftq model / loftq merge" below and README.md.
//
// Exit codes: 0 success, 1 bad input or failure (one line on stderr, no output
// written), 2 usage error, 130 interrupted (no output written).
//
// Output is all or nothing. Everything is computed and serialized in memory
// first; then the files go to temporary names (a fresh sibling directory
// DIR.tmp-<pid>-<k> when DIR does not exist, hidden temp files inside DIR when
// it does) and are renamed into place. Any failure, or SIGINT/SIGTERM/SIGHUP
// arriving before the final renames, removes every temporary and restores
// whatever had been replaced. The input file is never opened for writing, and
// an output path that is the input file is refused before any work.

#include <loftq/io/npy.hpp>
#include <loftq/io/safetensors.hpp>
#include <loftq/loftq.hpp>

#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <csignal>
#include <charconv>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <map>
#include <memory>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <exception>
#include <filesystem>
#include <limits>
#include <new>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace fs = std::filesystem;

namespace {

constexpr int kExitOk = 0;
constexpr int kExitBadInput = 1;
constexpr int kExitUsage = 2;
constexpr int kExitInterrupted = 130;

constexpr int kMaxThreads = 1024;
constexpr const char* kOutputNames[] = {"Q.npy", "A.npy", "B.npy", "report.json"};
constexpr int kNumOutputs = 4;

std::string version_string() {
  return std::to_string(LOFTQ_VERSION_MAJOR) + "." + std::to_string(LOFTQ_VERSION_MINOR) + "." +
         std::to_string(LOFTQ_VERSION_PATCH);
}

const char* scale_name(bool search) { return search ? "search" : "absmax"; }
const char* start_name(loftq::Start s) { return s == loftq::Start::zero ? "zero" : "svd"; }

// The help text. Defaults that belong to the library (scale, start) are read
// from loftq::Options{} so the tool and its help follow the library's choice.
std::string usage_text() {
  const loftq::Options lib;
  const std::string scale_default = scale_name(lib.scale_search), start_default = start_name(lib.start);
  return std::string(
    "usage: loftq init --input W.npy --output DIR [options]\n"
    "       loftq model --input PATH --output DIR [model options]\n"
    "       loftq merge --input PATH --shards DIR1,DIR2,... --output DIR [--overwrite] [--quiet]\n"
    "       loftq --help | --version\n"
    "\n"
    "LoftQ-initialize LoRA factors for one weight matrix W (m x n): W ~ Q + A B^T,\n"
    "with Q block-wise quantized and A (m x r), B (n x r) of rank r.\n"
    "\n"
    "Writes DIR/Q.npy (m x n), DIR/A.npy (m x r), DIR/B.npy (n x r), all float32\n"
    "C order, and DIR/report.json (settings, per-iteration errors, timing).\n"
    "PEFT's factors are lora_A = B^T and lora_B = A (with lora_alpha == r).\n"
    "\n"
    "options:\n"
    "  --input PATH          2-D .npy weight matrix, float32 or float64, C or Fortran\n"
    "                        order (computed in float32)\n"
    "  --output DIR          output directory; created if missing (with parents),\n"
    "                        otherwise the four files in it are replaced\n"
    "  --bits N              bits per weight, 2..8 (default 4)\n"
    "  --rank N              LoRA rank r, 1..min(m, n) (default 16)\n"
    "  --iters N             LoftQ alternating steps (default 5)\n"
    "  --quantizer nf|uniform  normal-float (QLoRA NF-k) or uniform grid (default nf)\n"
    "  --block-size N        elements per quantization block of the row-major\n"
    "                        flattening (default 64)\n"
    "  --scale absmax|search block scales: absmax, or searched per block for the\n"
    "                        lowest squared error (same storage) (default " + scale_default + ")\n"
    "  --svd exact|randomized  truncated SVD method (default randomized)\n"
    "  --seed N              seed of the randomized SVD, 0..2^64-1 (default 0)\n"
    "  --start zero|svd      zero: LoftQ's A = B = 0 start; svd: start from the\n"
    "                        top-r SVD of W (default " + start_default + ")\n"
    "  --double-quant        double quantization (QLoRA): the fp32 block scales are\n"
    "                        quantized to 8 bits in blocks of 256 after subtracting\n"
    "                        their mean (0.5 -> 0.127 bits/weight at block 64), then\n"
    "                        A, B are refit to the rounded Q once; Q.npy is that Q\n"
    "  --threads N           worker threads, 1..1024 (default: OpenMP's); the\n"
    "                        results are bit-identical for any thread count\n"
    "  --last                return the last iterate (as the reference does), not\n"
    "                        the one with the lowest error\n"
    "  --quiet               print nothing on success\n"
    "  -h, --help            show this help\n"
    "  --version             show the version\n"
    "\n"
    "Options take their value as '--opt VALUE' or '--opt=VALUE', each at most once.\n"
    "Counts (--rank, --iters, --block-size, --threads) are decimal integers >= 1.\n"
    "\n"
    "exit status:\n"
    "  0    success\n"
    "  1    bad input or failure: unreadable, malformed or truncated .npy, not 2-D,\n"
    "       dtype other than float32/float64, NaN or Inf in W, rank > min(m, n),\n"
    "       unsupported --bits, output path unusable or equal to the input;\n"
    "       one line on stderr and no output is written\n"
    "  2    usage error: unknown command or option, missing --input/--output,\n"
    "       missing, malformed, out-of-range or repeated value (a count of 0,\n"
    "       e.g. --rank 0 or --iters 0, is a usage error)\n"
    "  130  interrupted (SIGINT/SIGTERM/SIGHUP); no output is written\n"
    "\n"
    "loftq model: LoftQ-initialize every target weight of a safetensors checkpoint.\n"
    "  PATH is a .safetensors file or a directory holding model.safetensors, a\n"
    "  sharded set with model.safetensors.index.json, or exactly one .safetensors.\n"
    "  Targets are the 2-D tensors named <prefix>.<module>.weight with <module> in\n"
    "  --target-modules. DIR (which must not exist unless --overwrite) receives:\n"
    "    adapter_model.safetensors  base_model.model.<module path>.lora_A.weight (r x in)\n"
    "                               and .lora_B.weight (out x r), float32, scaled so\n"
    "                               (lora_alpha / r) * lora_B * lora_A = A B^T\n"
    "    adapter_config.json        PEFT LoraConfig (peft_type LORA, r, lora_alpha, ...)\n"
    "    model.safetensors          dequantized Q for targets in the input's dtype, every\n"
    "                               other tensor copied byte for byte (sharded like the\n"
    "                               input, with its index, when the input is sharded)\n"
    "    model.packed.safetensors   with --packed: <name>.qcodes (U8, bit-packed codes)\n"
    "                               and <name>.qscales (F32 block scales), or with\n"
    "                               --double-quant .qscales_q (U8), .qscales_absmax\n"
    "                               and .qscales_mean (F32); <name>.bits in metadata\n"
    "    loftq_report.json          per tensor: shape, bits, rank, error history,\n"
    "                               QLoRA baseline error, squared error, bits per\n"
    "                               weight, seconds; the bit allocation\n"
    "  config.json, generation_config.json and tokenizer files next to the input\n"
    "  are copied.\n"
    "model options:\n"
    "  --bits N, --rank N, --iters N, --quantizer nf|uniform, --block-size N,\n"
    "  --scale absmax|search, --start zero|svd, --svd exact|randomized, --seed N,\n"
    "  --threads N, --double-quant   as for init (--double-quant changes the\n"
    "                        packed scales to 8-bit codes, see README.md)\n"
    "  --bits-budget B       mixed precision instead of --bits: 2, 3 or 4 bits per\n"
    "                        target, chosen (exact knapsack) to minimize the total\n"
    "                        squared error ||W - Q - A B^T||^2 with an average of at\n"
    "                        most B code bits per weight, 2 <= B <= 4 (block scales\n"
    "                        not counted); measures each target at every width\n"
    "                        (3 LoftQ runs, plus 1 to recompute the chosen one);\n"
    "                        not with --shard\n"
    "  --lora-alpha A        PEFT lora_alpha, a positive number (default: r)\n"
    "  --target-modules LIST comma-separated module names (default\n"
    "                        q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj)\n"
    "  --packed              also write model.packed.safetensors\n"
    "  --shard K/N           process only targets i (0-based, in sorted name order)\n"
    "                        with i % N == K - 1, 1 <= K <= N, into a partial output\n"
    "                        (adapter_model.safetensors, shard_model.safetensors,\n"
    "                        loftq_report.json); combine the N outputs with merge\n"
    "  --overwrite           replace an existing DIR (only once the new one is complete)\n"
    "  --quiet               no progress on stderr, no summary on stdout\n"
    "\n"
    "loftq merge: assemble the outputs of 'loftq model --shard K/N' runs (all N,\n"
    "  same settings) and the original checkpoint PATH into the output an unsharded\n"
    "  run writes (identical tensors).\n");
}

// ---------------------------------------------------------------------------
// Errors

struct UsageError {
  std::string msg;
};

struct InputError {  // exit 1
  std::string msg;
};

struct Interrupted {};

// Messages go to stderr as exactly one line.
std::string one_line(std::string s) {
  for (char& c : s)
    if (c == '\n' || c == '\r') c = ' ';
  return s;
}

void print_error(const std::string& msg) { std::fprintf(stderr, "loftq: error: %s\n", one_line(msg).c_str()); }

// ---------------------------------------------------------------------------
// Signals: while nothing is on disk, a signal ends the process at once; once
// the publisher has started (stage 1), the handler only raises a flag, which
// the publisher checks before its commit point and answers with a rollback.

std::atomic<int> g_stage{0};  // 0: computing, 1: publishing, 2: handler is exiting
volatile std::sig_atomic_t g_interrupted = 0;

extern "C" void on_signal(int) {
  int expected = 0;
  if (g_stage.compare_exchange_strong(expected, 2)) _exit(kExitInterrupted);
  g_interrupted = 1;
}

void install_signal_handlers() {
  struct sigaction sa;
  std::memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;
  for (int s : {SIGINT, SIGTERM, SIGHUP}) sigaction(s, &sa, nullptr);
}

// Moves to stage 1. If a handler has already claimed the exit, wait for it.
void begin_publishing() {
  static_assert(std::atomic<int>::is_always_lock_free, "the signal handler needs a lock-free atomic");
  int expected = 0;
  if (!g_stage.compare_exchange_strong(expected, 1)) {
    for (;;) pause();
  }
}

void check_interrupt() {
  if (g_interrupted) throw Interrupted{};
}

// ---------------------------------------------------------------------------
// Argument parsing

struct Args {
  std::string input, output;
  int bits = 4;
  Eigen::Index rank = 16;
  int iters = 5;
  loftq::Quantizer::Kind kind = loftq::Quantizer::Kind::normal_float;
  Eigen::Index block_size = 64;
  loftq::SVDMethod svd = loftq::SVDMethod::randomized;
  std::uint64_t seed = 0;
  int threads = 0;  // 0: not given
  bool keep_best = true;
  bool quiet = false;
  // The library's defaults, so a change there reaches the tool.
  loftq::Start start = loftq::Options{}.start;
  bool scale_search = loftq::Options{}.scale_search;
  bool double_quant = false;
};

bool parse_u64(const std::string& s, std::uint64_t& out, bool& overflow) {
  overflow = false;
  if (s.empty()) return false;
  for (char c : s)
    if (c < '0' || c > '9') return false;
  const auto r = std::from_chars(s.data(), s.data() + s.size(), out);
  if (r.ec == std::errc::result_out_of_range) {
    overflow = true;
    return false;
  }
  return r.ec == std::errc() && r.ptr == s.data() + s.size();
}

std::uint64_t parse_count(const std::string& opt, const std::string& v, std::uint64_t lo, std::uint64_t hi) {
  std::uint64_t x = 0;
  bool overflow = false;
  if (!parse_u64(v, x, overflow) && !overflow)
    throw UsageError{"invalid value '" + v + "' for " + opt + ": expected a decimal integer in " +
                     std::to_string(lo) + ".." + std::to_string(hi)};
  if (overflow || x < lo || x > hi)
    throw UsageError{"value '" + v + "' for " + opt + " is out of range " + std::to_string(lo) + ".." +
                     std::to_string(hi)};
  return x;
}

struct OptSpec {
  const char* name;
  bool takes_value;
};

bool parse_scale(const std::string& v) {
  if (v == "absmax") return false;
  if (v == "search") return true;
  throw UsageError{"invalid value '" + v + "' for --scale: expected absmax or search"};
}

loftq::Start parse_start(const std::string& v) {
  if (v == "zero") return loftq::Start::zero;
  if (v == "svd") return loftq::Start::svd;
  throw UsageError{"invalid value '" + v + "' for --start: expected zero or svd"};
}

constexpr OptSpec kOptions[] = {
    {"--input", true},  {"--output", true},     {"--bits", true},  {"--rank", true},    {"--iters", true},
    {"--quantizer", true}, {"--block-size", true}, {"--scale", true}, {"--svd", true},  {"--seed", true},
    {"--start", true},  {"--threads", true},    {"--last", false}, {"--quiet", false}, {"--double-quant", false},
};

void apply(Args& a, const std::string& opt, const std::string& v) {
  constexpr std::uint64_t kIntMax = static_cast<std::uint64_t>(std::numeric_limits<int>::max());
  if (opt == "--input" || opt == "--output") {
    if (v.empty()) throw UsageError{opt + " needs a non-empty path"};
    (opt == "--input" ? a.input : a.output) = v;
  } else if (opt == "--bits") {
    // Any well-formed count is accepted here; the library decides which bit
    // widths it supports (an unsupported one is exit 1, like other bad input).
    a.bits = static_cast<int>(parse_count(opt, v, 0, kIntMax));
  } else if (opt == "--rank") {
    a.rank = static_cast<Eigen::Index>(parse_count(opt, v, 1, kIntMax));
  } else if (opt == "--iters") {
    a.iters = static_cast<int>(parse_count(opt, v, 1, kIntMax));
  } else if (opt == "--block-size") {
    a.block_size = static_cast<Eigen::Index>(parse_count(opt, v, 1, kIntMax));
  } else if (opt == "--threads") {
    a.threads = static_cast<int>(parse_count(opt, v, 1, kMaxThreads));
  } else if (opt == "--seed") {
    a.seed = parse_count(opt, v, 0, std::numeric_limits<std::uint64_t>::max());
  } else if (opt == "--quantizer") {
    if (v == "nf")
      a.kind = loftq::Quantizer::Kind::normal_float;
    else if (v == "uniform")
      a.kind = loftq::Quantizer::Kind::uniform;
    else
      throw UsageError{"invalid value '" + v + "' for --quantizer: expected nf or uniform"};
  } else if (opt == "--svd") {
    if (v == "exact")
      a.svd = loftq::SVDMethod::exact;
    else if (v == "randomized")
      a.svd = loftq::SVDMethod::randomized;
    else
      throw UsageError{"invalid value '" + v + "' for --svd: expected exact or randomized"};
  } else if (opt == "--scale") {
    a.scale_search = parse_scale(v);
  } else if (opt == "--start") {
    a.start = parse_start(v);
  } else if (opt == "--double-quant") {
    a.double_quant = true;
  } else if (opt == "--last") {
    a.keep_best = false;
  } else if (opt == "--quiet") {
    a.quiet = true;
  }
}

// Parses '--opt VALUE' / '--opt=VALUE' / '--flag' arguments against `specs`,
// calling apply(name, value) for each; every option at most once.
template <std::size_t K, class F>
void parse_flags(const std::vector<std::string>& argv, const OptSpec (&specs)[K], F&& apply_one) {
  std::set<std::string> seen;
  for (std::size_t i = 0; i < argv.size(); ++i) {
    const std::string& arg = argv[i];
    if (arg.size() < 3 || arg.compare(0, 2, "--") != 0)
      throw UsageError{"unexpected argument '" + arg + "'"};
    const std::size_t eq = arg.find('=');
    const std::string name = arg.substr(0, eq);
    const OptSpec* spec = nullptr;
    for (const OptSpec& o : specs)
      if (name == o.name) spec = &o;
    if (!spec) throw UsageError{"unknown option '" + name + "'"};
    if (!seen.insert(name).second) throw UsageError{"option " + name + " given more than once"};
    std::string value;
    if (!spec->takes_value) {
      if (eq != std::string::npos) throw UsageError{"option " + name + " takes no value"};
    } else if (eq != std::string::npos) {
      value = arg.substr(eq + 1);
    } else {
      // A following option is not taken as the value: '--input --output x'
      // is a missing value, not an input file named '--output'.
      if (i + 1 >= argv.size() || argv[i + 1].compare(0, 2, "--") == 0)
        throw UsageError{"option " + name + " needs a value"};
      value = argv[++i];
    }
    apply_one(name, value);
  }
}

Args parse_init_args(const std::vector<std::string>& argv) {
  Args a;
  parse_flags(argv, kOptions, [&](const std::string& name, const std::string& value) { apply(a, name, value); });
  if (a.input.empty()) throw UsageError{"missing --input"};
  if (a.output.empty()) throw UsageError{"missing --output"};
  return a;
}

// ---------------------------------------------------------------------------
// Output location checks (before any work)

// DIR without trailing separators, so that DIR + ".tmp-..." is a sibling.
fs::path normalize_output(const std::string& out) {
  fs::path p = fs::path(out).lexically_normal();
  if (!p.has_filename() && p.has_parent_path() && p != p.root_path()) p = p.parent_path();
  return p;
}

bool same_entry(const fs::path& a, const fs::path& b) {
  std::error_code ec;
  if (fs::exists(a, ec) && fs::exists(b, ec) && fs::equivalent(a, b, ec) && !ec) return true;
  // Same directory entry (e.g. a symlink at DIR/Q.npy named as the input).
  const fs::path ca = fs::weakly_canonical(fs::absolute(a, ec).parent_path(), ec) / a.filename();
  if (ec) return false;
  const fs::path cb = fs::weakly_canonical(fs::absolute(b, ec).parent_path(), ec) / b.filename();
  if (ec) return false;
  return ca == cb;
}

enum class OutMode { fresh, existing };

// Returns how DIR will be published; throws InputError when it cannot be.
OutMode check_output(const fs::path& dir, const std::string& input) {
  std::error_code ec;
  const fs::file_status st = fs::status(dir, ec);
  const fs::file_status lst = fs::symlink_status(dir, ec);
  if (fs::exists(st)) {
    if (!fs::is_directory(st)) throw InputError{dir.string() + ": output exists and is not a directory"};
    for (const char* name : kOutputNames) {
      const fs::path t = dir / name;
      if (same_entry(fs::path(input), t))
        throw InputError{input + ": the input file is an output path (" + t.string() + "); refusing to overwrite it"};
      const fs::file_status ts = fs::symlink_status(t, ec);
      if (fs::exists(ts) && fs::is_directory(ts)) throw InputError{t.string() + ": exists and is a directory"};
    }
    if (::access(dir.c_str(), W_OK | X_OK) != 0)
      throw InputError{dir.string() + ": output directory is not writable: " + std::strerror(errno)};
    return OutMode::existing;
  }
  if (fs::exists(lst)) throw InputError{dir.string() + ": output is a dangling symbolic link"};
  // DIR is missing: the nearest existing ancestor must be a writable directory.
  fs::path anc = fs::absolute(dir, ec).parent_path();
  while (!anc.empty()) {
    const fs::file_status as = fs::status(anc, ec);
    if (fs::exists(as)) {
      if (!fs::is_directory(as)) throw InputError{anc.string() + ": not a directory (in output path " + dir.string() + ")"};
      if (::access(anc.c_str(), W_OK | X_OK) != 0)
        throw InputError{anc.string() + ": cannot create the output directory there: " + std::strerror(errno)};
      break;
    }
    if (anc == anc.root_path()) break;
    anc = anc.parent_path();
  }
  return OutMode::fresh;
}

// ---------------------------------------------------------------------------
// Publishing

struct File {
  std::string name;
  std::vector<unsigned char> bytes;
};

// Creates `path` (which must not exist) with `bytes`. Returns false, writing
// nothing, when the name is taken; every other failure throws.
bool write_file_excl(const std::string& path, const std::vector<unsigned char>& bytes) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
  if (fd < 0) {
    if (errno == EEXIST) return false;
    throw InputError{path + ": cannot create: " + std::strerror(errno)};
  }
  auto fail = [&](const char* what, int e) {
    ::close(fd);
    ::unlink(path.c_str());
    throw InputError{path + ": " + what + ": " + std::strerror(e)};
  };
  std::size_t off = 0;
  while (off < bytes.size()) {
    const std::size_t chunk = std::min<std::size_t>(bytes.size() - off, std::size_t(1) << 30);
    const ssize_t n = ::write(fd, bytes.data() + off, chunk);
    if (n < 0) {
      if (errno == EINTR) continue;
      fail("write failed", errno);
    }
    off += static_cast<std::size_t>(n);
  }
  if (::fsync(fd) != 0 && errno != EINVAL && errno != EROFS) fail("fsync failed", errno);
  if (::close(fd) != 0) {
    const int e = errno;
    ::unlink(path.c_str());
    throw InputError{path + ": close failed: " + std::strerror(e)};
  }
  return true;
}

void fsync_dir(const fs::path& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd >= 0) {
    (void)::fsync(fd);
    ::close(fd);
  }
}

// Writes `files` to DIR so that either all of them appear or none does and
// nothing that existed before is changed.
class Publisher {
 public:
  Publisher(fs::path dir, OutMode mode) : dir_(std::move(dir)), mode_(mode) {}

  void publish(const std::vector<File>& files) {
    try {
      if (mode_ == OutMode::fresh)
        publish_fresh(files);
      else
        publish_existing(files);
    } catch (...) {
      rollback();
      throw;
    }
  }

 private:
  std::string tag(int k) const { return std::to_string(static_cast<long>(::getpid())) + "-" + std::to_string(k); }

  void make_parents() {
    std::vector<fs::path> missing;
    std::error_code ec;
    for (fs::path p = fs::absolute(dir_, ec).parent_path(); !p.empty(); p = p.parent_path()) {
      if (fs::exists(fs::symlink_status(p, ec))) break;
      missing.push_back(p);
      if (p == p.root_path()) break;
    }
    for (auto it = missing.rbegin(); it != missing.rend(); ++it) {
      if (::mkdir(it->c_str(), 0777) != 0) {
        if (errno == EEXIST) continue;  // created concurrently by someone else: not ours
        throw InputError{it->string() + ": cannot create directory: " + std::strerror(errno)};
      }
      created_dirs_.push_back(*it);
    }
  }

  void publish_fresh(const std::vector<File>& files) {
    make_parents();
    check_interrupt();
    for (int k = 0;; ++k) {
      fs::path t = dir_;
      t += ".tmp-" + tag(k);
      if (::mkdir(t.c_str(), 0777) == 0) {
        tmpdir_ = t;
        break;
      }
      if (errno != EEXIST || k >= 100) throw InputError{t.string() + ": cannot create directory: " + std::strerror(errno)};
    }
    for (const File& f : files) {
      check_interrupt();
      const fs::path p = tmpdir_ / f.name;
      if (!write_file_excl(p.string(), f.bytes)) throw InputError{p.string() + ": exists in a fresh directory"};
      tmp_files_.push_back(p);
    }
    fsync_dir(tmpdir_);
    check_interrupt();  // the commit point: after this rename the output is complete
    if (::rename(tmpdir_.c_str(), dir_.c_str()) != 0) {
      const int e = errno;
      throw InputError{dir_.string() + ": cannot publish the output directory: " +
                       (e == ENOTEMPTY || e == EEXIST ? std::string("it was created meanwhile by someone else")
                                                      : std::string(std::strerror(e)))};
    }
    tmp_files_.clear();
    tmpdir_.clear();
    created_dirs_.clear();
    fsync_dir(dir_.has_parent_path() ? dir_.parent_path() : fs::path("."));
  }

  void publish_existing(const std::vector<File>& files) {
    std::vector<fs::path> targets, temps;
    for (const File& f : files) {
      check_interrupt();
      fs::path p;
      for (int k = 0;; ++k) {
        p = dir_ / ("." + f.name + ".loftq-tmp-" + tag(k));
        if (write_file_excl(p.string(), f.bytes)) break;
        if (k >= 100) throw InputError{p.string() + ": cannot create a temporary file: names taken"};
      }
      tmp_files_.push_back(p);
      targets.push_back(dir_ / f.name);
      temps.push_back(p);
    }
    // Hard-link backups of the files about to be replaced, so a failed rename
    // halfway can put the old set back.
    std::error_code ec;
    for (std::size_t i = 0; i < targets.size(); ++i) {
      check_interrupt();
      if (!fs::exists(fs::symlink_status(targets[i], ec))) {
        backups_.push_back(fs::path());
        continue;
      }
      fs::path b;
      for (int k = 0;; ++k) {
        b = dir_ / ("." + files[i].name + ".loftq-bak-" + tag(k));
        if (::link(targets[i].c_str(), b.c_str()) == 0) break;
        const int e = errno;
        if (e == EEXIST && k < 100) continue;
        // No hard links here (some filesystems): fall back to a copy.
        ec.clear();
        if (e != EEXIST && fs::copy_file(targets[i], b, fs::copy_options::none, ec) && !ec) break;
        throw InputError{targets[i].string() + ": cannot back up the existing file: " + std::strerror(e)};
      }
      backups_.push_back(b);
    }
    check_interrupt();  // the commit point
    for (std::size_t i = 0; i < targets.size(); ++i) {
      if (::rename(temps[i].c_str(), targets[i].c_str()) != 0)
        throw InputError{targets[i].string() + ": cannot replace: " + std::strerror(errno)};
      renamed_.push_back(targets[i]);
      tmp_files_[i].clear();
    }
    fsync_dir(dir_);
    for (const fs::path& b : backups_)
      if (!b.empty()) ::unlink(b.c_str());
    backups_.clear();
    renamed_.clear();
    tmp_files_.clear();
  }

  void rollback() noexcept {
    // Undo the renames already done, newest first.
    for (std::size_t i = renamed_.size(); i-- > 0;) {
      const fs::path& b = i < backups_.size() ? backups_[i] : fs::path();
      if (!b.empty()) {
        if (::rename(b.c_str(), renamed_[i].c_str()) == 0) backups_[i].clear();
      } else {
        ::unlink(renamed_[i].c_str());
      }
    }
    for (const fs::path& b : backups_)
      if (!b.empty()) ::unlink(b.c_str());
    for (const fs::path& t : tmp_files_)
      if (!t.empty()) ::unlink(t.c_str());
    if (!tmpdir_.empty()) ::rmdir(tmpdir_.c_str());
    for (auto it = created_dirs_.rbegin(); it != created_dirs_.rend(); ++it) ::rmdir(it->c_str());
    renamed_.clear();
    backups_.clear();
    tmp_files_.clear();
    tmpdir_.clear();
    created_dirs_.clear();
  }

  fs::path dir_;
  OutMode mode_;
  fs::path tmpdir_;
  std::vector<fs::path> created_dirs_, tmp_files_, backups_, renamed_;
};

// ---------------------------------------------------------------------------
// The command

const char* quantizer_name(loftq::Quantizer::Kind k) {
  return k == loftq::Quantizer::Kind::normal_float ? "nf" : "uniform";
}

int effective_threads(int requested) { return loftq::detail::resolve_threads(requested); }

nlohmann::json double_quant_json(const loftq::DoubleQuantEffect& e) {
  return {{"scheme", "int8 absmax, mean subtracted"},
          {"block", loftq::kDoubleQuantBlock},
          {"bits_per_weight_before", e.bits_per_weight_before},
          {"rel_err_before", e.error_before},
          {"rel_err_rounded_scales", e.error_rounded},
          {"refit", e.refit_kept}};
}

int run_init(const Args& a) {
  const fs::path dir = normalize_output(a.output);
  const OutMode mode = check_output(dir, a.input);

  // Validates bits (unsupported -> loftq::Error) before the input is read.
  const loftq::Quantizer quantizer = [&] {
    try {
      return loftq::Quantizer(a.kind, a.bits, a.block_size, /*symmetric=*/true);
    } catch (const loftq::Error& e) {
      throw InputError{"--bits " + std::to_string(a.bits) + ": " + e.what()};
    }
  }();

  std::string dtype;
  loftq::io::NpyMatrix<float> W;
  {
    const loftq::io::NpyArray arr = loftq::io::read_npy(a.input);
    dtype = arr.itemsize == 8 ? "float64" : "float32";
    W = loftq::io::to_matrix<float>(arr, a.input);
  }
  const Eigen::Index m = W.rows(), n = W.cols();

  loftq::Options opt;
  opt.rank = a.rank;
  opt.iterations = a.iters;
  opt.svd.method = a.svd;
  opt.svd.seed = a.seed;
  opt.start = a.start;
  opt.scale_search = a.scale_search;
  opt.keep_best = a.keep_best;
  opt.threads = a.threads;
#ifdef _OPENMP
  if (a.threads > 0) omp_set_num_threads(a.threads);
#endif

  const auto t0 = std::chrono::steady_clock::now();
  loftq::Result<float> r;
  loftq::DoubleQuantEffect dq;
  try {
    r = loftq::initialize(W, quantizer, opt);
    if (a.double_quant) dq = loftq::double_quantize(W, r, opt);
  } catch (const loftq::Error& e) {
    throw InputError{a.input + ": " + e.what()};
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  W.resize(0, 0);

  nlohmann::json rep;
  rep["version"] = version_string();
  rep["input"] = a.input;
  rep["dtype"] = dtype;
  rep["shape"] = {m, n};
  rep["bits"] = a.bits;
  rep["rank"] = a.rank;
  rep["iterations"] = a.iters;
  rep["iterations_run"] = r.history.size();
  rep["quantizer"] = quantizer_name(a.kind);
  rep["block_size"] = a.block_size;
  rep["scale"] = scale_name(a.scale_search);
  rep["svd"] = loftq::to_string(a.svd);
  rep["seed"] = a.seed;
  rep["start"] = start_name(a.start);
  rep["threads"] = effective_threads(a.threads);
  rep["keep_best"] = a.keep_best;
  rep["best_iteration"] = r.best_iteration;
  rep["history"] = r.history;
  rep["rel_err"] = r.error();
  rep["qlora_rel_err"] = r.qlora_error;
  rep["bits_per_weight"] = r.packed.bits_per_weight();
  rep["double_quant"] = a.double_quant ? double_quant_json(dq) : nlohmann::json(false);
  rep["seconds"] = seconds;
  const std::string json = rep.dump(2, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";

  std::vector<File> files(kNumOutputs);
  files[0] = {kOutputNames[0], loftq::io::npy_image(r.Q)};
  files[1] = {kOutputNames[1], loftq::io::npy_image(r.A)};
  files[2] = {kOutputNames[2], loftq::io::npy_image(r.B)};
  files[3] = {kOutputNames[3], std::vector<unsigned char>(json.begin(), json.end())};

  begin_publishing();
  Publisher(dir, mode).publish(files);

  if (!a.quiet) {
    std::printf("loftq %s: %s (%ldx%ld %s) -> %s\n", version_string().c_str(), a.input.c_str(), static_cast<long>(m),
                static_cast<long>(n), dtype.c_str(), dir.c_str());
    std::printf("  %s%d, block %ld, scale %s, rank %ld, svd %s, start %s, seed %llu, threads %d\n",
                quantizer_name(a.kind), a.bits, static_cast<long>(a.block_size), scale_name(a.scale_search),
                static_cast<long>(a.rank), loftq::to_string(a.svd), start_name(a.start),
                static_cast<unsigned long long>(a.seed), effective_threads(a.threads));
    std::printf("  QLoRA  rel. error %.6f\n", r.qlora_error);
    for (std::size_t t = 0; t < r.history.size(); ++t) {
      const char* mark = static_cast<int>(t + 1) == r.best_iteration ? "  <- returned" : "";
      if (a.double_quant && t + 1 == r.history.size())
        std::printf("  double-quant rel. error %.6f%s\n", r.history[t], mark);
      else
        std::printf("  iter %-2zu rel. error %.6f%s\n", t + 1, r.history[t], mark);
    }
    if (a.double_quant) {
      std::printf("  double quantization: %.4f -> %.4f bits/weight, rel. error %.6f -> %.6f (%.6f before the refit)\n",
                  dq.bits_per_weight_before, dq.bits_per_weight_after, dq.error_before, dq.error_after, dq.error_rounded);
      std::printf("  returned the double-quantized %s iterate, rel. error %.6f; %.3f s\n", a.keep_best ? "best" : "last",
                  r.error(), seconds);
    } else {
      std::printf("  returned iteration %d (%s), rel. error %.6f; %.3f s\n", r.best_iteration,
                  a.keep_best ? "best" : "last", r.error(), seconds);
    }
    std::fflush(stdout);
  }
  return kExitOk;
}

// ---------------------------------------------------------------------------
// loftq model / loftq merge: whole safetensors checkpoints.
//
// Output is built in a fresh sibling directory DIR.tmp-<pid>-<k> and renamed
// to DIR at the end (with --overwrite an existing DIR is first moved aside to
// DIR.old-<pid>-<k>, then removed). Any failure or signal before that rename
// removes the temporary directory; nothing half-written is ever at DIR.
// Tensors are streamed: one target is in memory at a time, the input is
// memory-mapped and its pages are released after use, and every output file
// is written at known offsets as the tensors are produced.

namespace st = loftq::io;

constexpr const char* kShardModelFile = "shard_model.safetensors";
constexpr const char* kAdapterFile = "adapter_model.safetensors";
constexpr const char* kPackedFile = "model.packed.safetensors";
constexpr const char* kReportFile = "loftq_report.json";
constexpr const char* kDefaultTargets = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj";
constexpr const char* kSideFiles[] = {"config.json",          "generation_config.json", "tokenizer.json",
                                      "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model"};

struct ModelArgs {
  std::string input, output;
  int bits = 4;
  Eigen::Index rank = 16;
  int iters = 5;
  loftq::Quantizer::Kind kind = loftq::Quantizer::Kind::normal_float;
  Eigen::Index block_size = 64;
  double lora_alpha = 0;  // 0: r
  std::vector<std::string> modules;
  int threads = 0;
  int shard_k = 0, shard_n = 0;  // 0: not sharded
  bool quiet = false, overwrite = false, packed = false;
  loftq::SVDMethod svd = loftq::SVDMethod::randomized;
  std::uint64_t seed = 0;
  loftq::Start start = loftq::Options{}.start;
  bool scale_search = loftq::Options{}.scale_search;
  bool double_quant = false;
  double bits_budget = 0;  // 0: one width for every target (--bits)
};

// The widths --bits-budget chooses from.
const std::vector<int> kBudgetBits = {2, 3, 4};

constexpr OptSpec kModelOptions[] = {
    {"--input", true},      {"--output", true},  {"--bits", true},       {"--rank", true},    {"--iters", true},
    {"--quantizer", true},  {"--block-size", true}, {"--lora-alpha", true}, {"--target-modules", true},
    {"--threads", true},    {"--shard", true},   {"--quiet", false},     {"--overwrite", false}, {"--packed", false},
    {"--svd", true},        {"--seed", true},    {"--scale", true},      {"--start", true},
    {"--double-quant", false}, {"--bits-budget", true},
};

std::vector<std::string> split_list(const std::string& opt, const std::string& v) {
  std::vector<std::string> out;
  std::size_t b = 0;
  for (;;) {
    const std::size_t e = v.find(',', b);
    const std::string item = v.substr(b, e == std::string::npos ? std::string::npos : e - b);
    if (item.empty()) throw UsageError{"invalid value '" + v + "' for " + opt + ": empty list item"};
    if (std::find(out.begin(), out.end(), item) == out.end()) out.push_back(item);
    if (e == std::string::npos) break;
    b = e + 1;
  }
  return out;
}

ModelArgs parse_model_args(const std::vector<std::string>& argv) {
  ModelArgs a;
  std::set<std::string> seen;
  constexpr std::uint64_t kIntMax = static_cast<std::uint64_t>(std::numeric_limits<int>::max());
  parse_flags(argv, kModelOptions, [&](const std::string& opt, const std::string& v) {
    if (opt == "--input" || opt == "--output") {
      if (v.empty()) throw UsageError{opt + " needs a non-empty path"};
      (opt == "--input" ? a.input : a.output) = v;
    } else if (opt == "--bits") {
      a.bits = static_cast<int>(parse_count(opt, v, 0, kIntMax));
    } else if (opt == "--rank") {
      a.rank = static_cast<Eigen::Index>(parse_count(opt, v, 1, kIntMax));
    } else if (opt == "--iters") {
      a.iters = static_cast<int>(parse_count(opt, v, 1, kIntMax));
    } else if (opt == "--block-size") {
      a.block_size = static_cast<Eigen::Index>(parse_count(opt, v, 1, kIntMax));
    } else if (opt == "--threads") {
      a.threads = static_cast<int>(parse_count(opt, v, 1, kMaxThreads));
    } else if (opt == "--seed") {
      a.seed = parse_count(opt, v, 0, std::numeric_limits<std::uint64_t>::max());
    } else if (opt == "--quantizer") {
      if (v == "nf")
        a.kind = loftq::Quantizer::Kind::normal_float;
      else if (v == "uniform")
        a.kind = loftq::Quantizer::Kind::uniform;
      else
        throw UsageError{"invalid value '" + v + "' for --quantizer: expected nf or uniform"};
    } else if (opt == "--svd") {
      if (v == "exact")
        a.svd = loftq::SVDMethod::exact;
      else if (v == "randomized")
        a.svd = loftq::SVDMethod::randomized;
      else
        throw UsageError{"invalid value '" + v + "' for --svd: expected exact or randomized"};
    } else if (opt == "--lora-alpha") {
      char* end = nullptr;
      errno = 0;
      const double x = v.empty() ? 0.0 : std::strtod(v.c_str(), &end);
      if (v.empty() || end != v.c_str() + v.size() || errno != 0 || !std::isfinite(x) || x <= 0)
        throw UsageError{"invalid value '" + v + "' for --lora-alpha: expected a positive number"};
      a.lora_alpha = x;
    } else if (opt == "--target-modules") {
      a.modules = split_list(opt, v);
    } else if (opt == "--shard") {
      const std::size_t slash = v.find('/');
      if (slash == std::string::npos) throw UsageError{"invalid value '" + v + "' for --shard: expected K/N"};
      a.shard_n = static_cast<int>(parse_count(opt, v.substr(slash + 1), 1, 1000000));
      a.shard_k = static_cast<int>(parse_count(opt, v.substr(0, slash), 1, static_cast<std::uint64_t>(a.shard_n)));
    } else if (opt == "--quiet") {
      a.quiet = true;
    } else if (opt == "--overwrite") {
      a.overwrite = true;
    } else if (opt == "--packed") {
      a.packed = true;
    } else if (opt == "--scale") {
      a.scale_search = parse_scale(v);
    } else if (opt == "--start") {
      a.start = parse_start(v);
    } else if (opt == "--double-quant") {
      a.double_quant = true;
    } else if (opt == "--bits-budget") {
      const double lo = kBudgetBits.front(), hi = kBudgetBits.back();
      char* end = nullptr;
      errno = 0;
      const double x = v.empty() ? 0.0 : std::strtod(v.c_str(), &end);
      if (v.empty() || end != v.c_str() + v.size() || errno != 0 || !std::isfinite(x) || x < lo || x > hi)
        throw UsageError{"invalid value '" + v + "' for --bits-budget: expected a number of bits per weight in " +
                         std::to_string(kBudgetBits.front()) + ".." + std::to_string(kBudgetBits.back())};
      a.bits_budget = x;
    }
    seen.insert(opt);
  });
  if (a.input.empty()) throw UsageError{"missing --input"};
  if (a.output.empty()) throw UsageError{"missing --output"};
  if (a.bits_budget > 0 && seen.count("--bits"))
    throw UsageError{"--bits and --bits-budget exclude each other: the budget chooses the widths"};
  // The allocation weighs every target against every other; one shard only
  // sees its own.
  if (a.bits_budget > 0 && a.shard_n > 0) throw UsageError{"--bits-budget cannot be combined with --shard"};
  if (a.modules.empty()) a.modules = split_list("--target-modules", kDefaultTargets);
  return a;
}

// --- helpers ----------------------------------------------------------------

std::string fmt_duration(double s) {
  if (!std::isfinite(s) || s < 0) s = 0;
  const long t = static_cast<long>(s + 0.5);
  char buf[32];
  std::snprintf(buf, sizeof buf, "%ld:%02ld:%02ld", t / 3600, (t / 60) % 60, t % 60);
  return buf;
}

// A progress line on stderr: redrawn in place on a terminal, one line per
// finished tensor otherwise.
class Progress {
 public:
  Progress(std::size_t total, bool quiet) : total_(total), quiet_(quiet), tty_(::isatty(2) != 0) {}
  void update(std::size_t done, const std::string& current) {
    if (quiet_) return;
    const double el = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0_).count();
    const double eta = done > 0 ? el / static_cast<double>(done) * static_cast<double>(total_ - done) : 0.0;
    const int pct = total_ ? static_cast<int>(100 * done / total_) : 100;
    char head[128];
    std::snprintf(head, sizeof head, "[%zu/%zu] %3d%%  elapsed %s  ETA %s  ", done, total_, pct,
                  fmt_duration(el).c_str(), done > 0 ? fmt_duration(eta).c_str() : "-:--:--");
    if (tty_) {
      std::string bar(20, ' ');
      for (std::size_t i = 0; i < (total_ ? 20 * done / total_ : 20); ++i) bar[i] = '#';
      std::fprintf(stderr, "\r[%s] %s%s\x1b[K", bar.c_str(), head, current.c_str());
      if (done == total_) std::fputc('\n', stderr);
    } else if (done > 0) {
      std::fprintf(stderr, "loftq: %s%s\n", head, current.c_str());
    }
    std::fflush(stderr);
  }

 private:
  std::size_t total_;
  bool quiet_, tty_;
  std::chrono::steady_clock::time_point t0_ = std::chrono::steady_clock::now();
};

// The module path of a weight ("model.layers.0.self_attn.q_proj") when the
// tensor is `<prefix>.<module>.weight` with module in `modules`; else "".
std::string matched_module(const std::string& name, const std::vector<std::string>& modules) {
  static const std::string suffix = ".weight";
  if (name.size() <= suffix.size() || name.compare(name.size() - suffix.size(), suffix.size(), suffix) != 0) return {};
  const std::string path = name.substr(0, name.size() - suffix.size());
  for (const std::string& m : modules)
    if (path == m || (path.size() > m.size() && path.compare(path.size() - m.size(), m.size(), m) == 0 &&
                      path[path.size() - m.size() - 1] == '.'))
      return m;
  return {};
}

struct Target {
  std::string name, module;
  std::size_t file = 0;
  const st::TensorInfo* info = nullptr;
  std::uint64_t rows = 0, cols = 0;
  std::string module_path() const { return name.substr(0, name.size() - 7); }
  std::string lora_a() const { return "base_model.model." + module_path() + ".lora_A.weight"; }
  std::string lora_b() const { return "base_model.model." + module_path() + ".lora_B.weight"; }
};

struct Plan {
  std::vector<Target> targets;        // all targets, sorted by name
  std::vector<std::string> modules;   // modules that matched, in the requested order
};

Plan plan_targets(const st::Checkpoint& ck, const std::vector<std::string>& modules, Eigen::Index rank,
                  const std::string& input) {
  Plan p;
  std::set<std::string> used;
  for (const auto& kv : ck.entries()) {  // std::map: sorted by name
    const st::TensorInfo& t = *kv.second.info;
    if (t.shape.size() != 2) continue;
    const std::string m = matched_module(kv.first, modules);
    if (m.empty()) continue;
    if (!st::is_float_dtype(t.dtype))
      throw InputError{input + ": target tensor '" + t.name + "' has dtype " + st::dtype_name(t.dtype) +
                       "; expected F32, F16, BF16 or F64"};
    const std::uint64_t mn = std::min(t.shape[0], t.shape[1]);
    if (static_cast<std::uint64_t>(rank) > mn)
      throw InputError{input + ": --rank " + std::to_string(rank) + " exceeds min(out, in) = " + std::to_string(mn) +
                       " of target tensor '" + t.name + "' (" + std::to_string(t.shape[0]) + "x" +
                       std::to_string(t.shape[1]) + ")"};
    if (t.shape[0] > static_cast<std::uint64_t>(std::numeric_limits<int>::max()) ||
        t.shape[1] > static_cast<std::uint64_t>(std::numeric_limits<int>::max()))
      throw InputError{input + ": target tensor '" + t.name + "' is too large"};
    Target tg;
    tg.name = kv.first;
    tg.module = m;
    tg.file = kv.second.file;
    tg.info = &t;
    tg.rows = t.shape[0];
    tg.cols = t.shape[1];
    p.targets.push_back(tg);
    used.insert(m);
  }
  if (p.targets.empty()) {
    std::string list;
    for (const std::string& m : modules) list += (list.empty() ? "" : ",") + m;
    throw InputError{input + ": no 2-D tensor named <prefix>.<module>.weight matches --target-modules " + list};
  }
  for (const std::string& m : modules)
    if (used.count(m)) p.modules.push_back(m);
  return p;
}

// Whether target i (0-based, in name order) belongs to shard K of N (1-based).
bool in_shard(std::size_t i, int k, int n) { return n <= 1 || static_cast<int>(i % static_cast<std::size_t>(n)) == k - 1; }

std::string dir_of_input(const st::Checkpoint& ck, const std::string& input) {
  if (!ck.dir().empty()) return ck.dir();
  const fs::path p = fs::path(input).parent_path();
  return p.empty() ? std::string(".") : p.string();
}

// config.json next to the checkpoint, when present and valid; else null.
nlohmann::json read_config(const std::string& dir) {
  const fs::path p = fs::path(dir) / "config.json";
  std::error_code ec;
  if (!fs::is_regular_file(p, ec) || fs::file_size(p, ec) > (std::uintmax_t{16} << 20)) return nullptr;
  std::FILE* f = std::fopen(p.c_str(), "rb");
  if (!f) return nullptr;
  std::string text;
  char buf[65536];
  std::size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) text.append(buf, n);
  std::fclose(f);
  const nlohmann::json j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  return j.is_object() ? j : nlohmann::json(nullptr);
}

nlohmann::json task_type_of(const nlohmann::json& config) {
  if (!config.is_object() || !config.contains("architectures") || !config["architectures"].is_array()) return nullptr;
  for (const auto& a : config["architectures"]) {
    if (!a.is_string()) continue;
    const std::string s = a.get<std::string>();
    auto ends = [&](const std::string& suf) {
      return s.size() >= suf.size() && s.compare(s.size() - suf.size(), suf.size(), suf) == 0;
    };
    if (ends("ForCausalLM")) return "CAUSAL_LM";
    if (ends("ForSequenceClassification")) return "SEQ_CLS";
    if (ends("ForTokenClassification")) return "TOKEN_CLS";
    if (ends("ForQuestionAnswering")) return "QUESTION_ANS";
  }
  return nullptr;
}

void write_text_file(const fs::path& p, const std::string& text) {
  if (!write_file_excl(p.string(), std::vector<unsigned char>(text.begin(), text.end())))
    throw InputError{p.string() + ": exists in a fresh directory"};
}

std::string dump_json(const nlohmann::json& j) {
  return j.dump(2, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
}

// True when `inner` is `outer` or lies below it (after resolving symlinks).
bool path_within(const fs::path& inner, const fs::path& outer) {
  std::error_code ec;
  const fs::path a = fs::weakly_canonical(fs::absolute(inner, ec), ec);
  const fs::path b = fs::weakly_canonical(fs::absolute(outer, ec), ec);
  if (ec) return false;
  auto ia = a.begin();
  for (auto ib = b.begin(); ib != b.end(); ++ib, ++ia) {
    if (ib->empty()) continue;
    if (ia == a.end() || *ia != *ib) return false;
  }
  return true;
}

// The output directory, built as a temporary sibling and renamed into place.
class OutputDir {
 public:
  OutputDir(fs::path dir, bool overwrite, const std::vector<std::string>& inputs) : dir_(std::move(dir)) {
    std::error_code ec;
    const fs::file_status s = fs::symlink_status(dir_, ec);
    if (fs::exists(s)) {
      if (!overwrite) throw InputError{dir_.string() + ": output exists; pass --overwrite to replace it"};
      if (!fs::is_directory(fs::status(dir_, ec)))
        throw InputError{dir_.string() + ": output exists and is not a directory"};
      for (const std::string& in : inputs)
        if (path_within(in, dir_))
          throw InputError{in + ": the input is inside the output directory " + dir_.string() + "; refusing to replace it"};
      replace_ = true;
    }
  }
  OutputDir(const OutputDir&) = delete;
  OutputDir& operator=(const OutputDir&) = delete;
  ~OutputDir() { discard(); }

  // Creates the temporary directory (and missing parents of DIR).
  void create() {
    std::vector<fs::path> missing;
    std::error_code ec;
    for (fs::path p = fs::absolute(dir_, ec).parent_path(); !p.empty(); p = p.parent_path()) {
      if (fs::exists(fs::symlink_status(p, ec))) {
        if (!fs::is_directory(fs::status(p, ec))) throw InputError{p.string() + ": not a directory (in output path)"};
        break;
      }
      missing.push_back(p);
      if (p == p.root_path()) break;
    }
    for (auto it = missing.rbegin(); it != missing.rend(); ++it) {
      if (::mkdir(it->c_str(), 0777) != 0) {
        if (errno == EEXIST) continue;
        throw InputError{it->string() + ": cannot create directory: " + std::strerror(errno)};
      }
      created_.push_back(*it);
    }
    for (int k = 0;; ++k) {
      fs::path t = dir_;
      t += ".tmp-" + std::to_string(static_cast<long>(::getpid())) + "-" + std::to_string(k);
      if (::mkdir(t.c_str(), 0777) == 0) {
        tmp_ = t;
        return;
      }
      if (errno != EEXIST || k >= 100) throw InputError{t.string() + ": cannot create directory: " + std::strerror(errno)};
    }
  }
  const fs::path& tmp() const { return tmp_; }

  void publish() {
    fsync_dir(tmp_);
    check_interrupt();  // the commit point
    fs::path old;
    if (replace_) {
      for (int k = 0;; ++k) {
        old = dir_;
        old += ".old-" + std::to_string(static_cast<long>(::getpid())) + "-" + std::to_string(k);
        std::error_code ec;
        if (!fs::exists(fs::symlink_status(old, ec))) break;
        if (k >= 100) throw InputError{old.string() + ": names taken"};
      }
      if (::rename(dir_.c_str(), old.c_str()) != 0)
        throw InputError{dir_.string() + ": cannot move the existing output aside: " + std::strerror(errno)};
    }
    if (::rename(tmp_.c_str(), dir_.c_str()) != 0) {
      const int e = errno;
      if (replace_) (void)::rename(old.c_str(), dir_.c_str());
      throw InputError{dir_.string() + ": cannot publish the output directory: " + std::strerror(e)};
    }
    tmp_.clear();
    created_.clear();
    fsync_dir(dir_.has_parent_path() ? dir_.parent_path() : fs::path("."));
    if (replace_) {
      std::error_code ec;
      fs::remove_all(old, ec);
    }
  }

 private:
  void discard() noexcept {
    std::error_code ec;
    if (!tmp_.empty()) fs::remove_all(tmp_, ec);
    for (auto it = created_.rbegin(); it != created_.rend(); ++it) ::rmdir(it->c_str());
    tmp_.clear();
    created_.clear();
  }

  fs::path dir_, tmp_;
  std::vector<fs::path> created_;
  bool replace_ = false;
};

// Copies a mapped tensor into a writer in 64 MiB chunks, releasing the input
// pages as it goes.
void copy_tensor(const st::SafetensorsFile& f, const st::TensorInfo& t, st::SafetensorsWriter& w,
                 const std::string& out_name) {
  const std::uint64_t chunk = std::uint64_t(64) << 20;
  std::uint64_t off = 0;
  do {
    const std::uint64_t n = std::min(chunk, t.nbytes() - off);
    w.write(out_name, f.bytes(t) + off, n, off);
    f.release(t, off, n);
    off += n;
    check_interrupt();
  } while (off < t.nbytes());
}

std::map<std::string, std::string> with_format(std::map<std::string, std::string> m) {
  if (!m.count("format")) m["format"] = "pt";
  return m;
}

// Everything the outputs share between `model` and `merge`.
struct Settings {
  nlohmann::json j;  // bits (null with a budget), rank, iters, quantizer, block_size, scale, start, double_quant,
                     // lora_alpha, svd, seed, target_modules, packed[, bits_budget]
  int bits() const { return j["bits"].get<int>(); }
  std::int64_t rank() const { return j["rank"].get<std::int64_t>(); }
  double alpha() const { return j["lora_alpha"].get<double>(); }
  bool packed() const { return j["packed"].get<bool>(); }
  std::vector<std::string> modules() const { return j["target_modules"].get<std::vector<std::string>>(); }
  // Absent in reports of older versions, which had neither.
  bool double_quant() const { return j.value("double_quant", false); }
  std::string scale() const { return j.value("scale", std::string("absmax")); }
  loftq::Quantizer quantizer(int bits) const {
    const std::string qn = j.at("quantizer").get<std::string>();
    return loftq::Quantizer(qn == "uniform" ? loftq::Quantizer::Kind::uniform : loftq::Quantizer::Kind::normal_float,
                            bits, j.at("block_size").get<Eigen::Index>(), /*symmetric=*/true);
  }
};

// The writers of one run: base model files (mirroring the input's files, or
// shard_model.safetensors for a --shard run), the adapter, the packed codes.
struct Writers {
  std::vector<std::unique_ptr<st::SafetensorsWriter>> base;  // one per input file (full), or one (shard)
  std::unique_ptr<st::SafetensorsWriter> adapter, packed;
  std::map<std::string, std::size_t> base_of;  // tensor name -> index into base

  void commit() {
    for (auto& w : base) w->commit();
    adapter->commit();
    if (packed) packed->commit();
  }
};

std::string base_file_name(const st::Checkpoint& ck, std::size_t i) {
  return ck.sharded() ? ck.file_name(i) : std::string("model.safetensors");
}

// The tensors model.packed.safetensors holds for one target, in write order.
std::vector<st::TensorDecl> packed_tensors(const Target& t, int bits, const Settings& s) {
  const std::uint64_t numel = t.rows * t.cols, bs = s.j.at("block_size").get<std::uint64_t>();
  const std::uint64_t nb = (numel + bs - 1) / bs;
  std::vector<st::TensorDecl> d = {{t.name + ".qcodes", st::Dtype::U8, {(numel * static_cast<std::uint64_t>(bits) + 7) / 8}}};
  if (s.double_quant()) {
    const std::uint64_t dqb = static_cast<std::uint64_t>(loftq::kDoubleQuantBlock);
    d.push_back({t.name + ".qscales_q", st::Dtype::U8, {nb}});
    d.push_back({t.name + ".qscales_absmax", st::Dtype::F32, {(nb + dqb - 1) / dqb}});
    d.push_back({t.name + ".qscales_mean", st::Dtype::F32, {1}});
  } else {
    d.push_back({t.name + ".qscales", st::Dtype::F32, {nb}});
  }
  return d;
}

// {"<tensor name>": bits} of the given targets, for file metadata.
std::string bits_json(const std::vector<const Target*>& ts, const std::map<std::string, int>& bits_of) {
  nlohmann::json j = nlohmann::json::object();
  for (const Target* t : ts) j[t->name] = bits_of.at(t->name);
  return j.dump();
}

Writers open_writers(const fs::path& tmp, const st::Checkpoint& ck, const std::vector<const Target*>& sel,
                     bool shard_run, const Settings& s, const std::map<std::string, int>& bits_of) {
  Writers w;
  const std::uint64_t r = static_cast<std::uint64_t>(s.rank());
  std::map<std::string, const Target*> selected;
  for (const Target* t : sel) selected[t->name] = t;
  // The targets' bit widths go into each file that holds them.
  auto with_bits = [&](std::map<std::string, std::string> meta, const std::vector<const Target*>& ts) {
    if (!ts.empty()) meta["loftq.tensor_bits"] = bits_json(ts, bits_of);
    return with_format(std::move(meta));
  };
  if (shard_run) {
    std::vector<st::TensorDecl> d;
    for (const Target* t : sel) {
      d.push_back({t->name, t->info->dtype, t->info->shape});
      w.base_of[t->name] = 0;
    }
    w.base.push_back(std::make_unique<st::SafetensorsWriter>((tmp / kShardModelFile).string(), d, with_bits({}, sel)));
  } else {
    for (std::size_t f = 0; f < ck.num_files(); ++f) {
      std::vector<st::TensorDecl> d;
      std::vector<const Target*> here;
      for (const st::TensorInfo& t : ck.file(f).tensors()) {
        d.push_back({t.name, t.dtype, t.shape});
        w.base_of[t.name] = f;
        const auto it = selected.find(t.name);
        if (it != selected.end()) here.push_back(it->second);
      }
      w.base.push_back(std::make_unique<st::SafetensorsWriter>((tmp / base_file_name(ck, f)).string(), d,
                                                               with_bits(ck.file(f).metadata(), here)));
    }
  }
  std::vector<st::TensorDecl> ad;
  for (const Target* t : sel) {
    ad.push_back({t->lora_a(), st::Dtype::F32, {r, t->cols}});
    ad.push_back({t->lora_b(), st::Dtype::F32, {t->rows, r}});
  }
  w.adapter = std::make_unique<st::SafetensorsWriter>((tmp / kAdapterFile).string(), ad, with_bits({}, sel));
  if (s.packed()) {
    std::set<int> widths;
    for (const Target* t : sel) widths.insert(bits_of.at(t->name));
    nlohmann::json codebooks = nlohmann::json::object();
    for (int b : widths) codebooks[std::to_string(b)] = s.quantizer(b).codebook();
    const int one = widths.size() == 1 ? *widths.begin() : 0;  // the width when all share one
    std::string layout =
        "codes: LSB-first bit stream over the row-major flattening, element e in stream bits [e*bits, (e+1)*bits) "
        "with bits = <name>.bits, stream bit s = bit s%8 of byte s/8; block b = elements [b*block_size, "
        "(b+1)*block_size); value = codebooks[bits][code] * scale[b]";
    layout += s.double_quant()
                  ? "; scale[b] = qscales_mean + (qscales_q[b] - 128) * (qscales_absmax[b/256] / 127) in float32 "
                    "(exact but for the final add)"
                  : "; scale[b] = qscales[b]";
    std::map<std::string, std::string> meta = {
        {"format", "loftq-packed"},
        {"loftq.bits", one ? std::to_string(one) : std::string("mixed")},
        {"loftq.block_size", std::to_string(s.j.at("block_size").get<std::int64_t>())},
        {"loftq.quantizer", one ? s.quantizer(one).name() : s.j.at("quantizer").get<std::string>()},
        {"loftq.scale", s.scale()},
        {"loftq.codebooks", codebooks.dump()},
        {"loftq.layout", layout}};
    // A reader of the single-width layout keeps working; a mixed file says
    // "mixed" there so such a reader fails instead of misreading it.
    if (one) meta["loftq.codebook"] = codebooks[std::to_string(one)].dump();
    if (s.double_quant()) {
      meta["loftq.double_quant"] = "int8-absmax-mean";
      meta["loftq.double_quant_block"] = std::to_string(loftq::kDoubleQuantBlock);
    }
    std::vector<st::TensorDecl> pd;
    for (const Target* t : sel) {
      const int b = bits_of.at(t->name);
      for (st::TensorDecl& d : packed_tensors(*t, b, s)) pd.push_back(std::move(d));
      meta[t->name + ".shape"] = nlohmann::json({t->rows, t->cols}).dump();
      meta[t->name + ".bits"] = std::to_string(b);
    }
    w.packed = std::make_unique<st::SafetensorsWriter>((tmp / kPackedFile).string(), pd, meta);
  }
  return w;
}

// adapter_config.json: PEFT's LoraConfig. init_lora_weights is true because the
// saved factors are already the LoftQ initialization: PEFT must load them as
// they are, not run its own LoftQ (which needs the full-precision base).
nlohmann::json adapter_config(const Settings& s, const nlohmann::json& config, const std::vector<std::string>& modules) {
  nlohmann::json c;
  c["peft_type"] = "LORA";
  c["r"] = s.rank();
  const double alpha = s.alpha();
  if (alpha == std::floor(alpha) && alpha < 2147483648.0)
    c["lora_alpha"] = static_cast<std::int64_t>(alpha);  // PEFT's type is int; keep it when it is one
  else
    c["lora_alpha"] = alpha;
  c["target_modules"] = modules;
  c["init_lora_weights"] = true;
  c["bias"] = "none";
  c["lora_dropout"] = 0.0;
  c["fan_in_fan_out"] = false;
  c["use_rslora"] = false;
  c["use_dora"] = false;
  c["modules_to_save"] = nullptr;
  c["layers_to_transform"] = nullptr;
  c["layers_pattern"] = nullptr;
  c["rank_pattern"] = nlohmann::json::object();
  c["alpha_pattern"] = nlohmann::json::object();
  c["inference_mode"] = true;
  c["revision"] = nullptr;
  c["task_type"] = task_type_of(config);
  c["base_model_name_or_path"] = nullptr;
  if (config.is_object() && config.contains("_name_or_path") && config["_name_or_path"].is_string() &&
      !config["_name_or_path"].get<std::string>().empty())
    c["base_model_name_or_path"] = config["_name_or_path"];
  return c;
}

// The files a full (unsharded or merged) output has besides the tensors.
void write_full_extras(const fs::path& tmp, const st::Checkpoint& ck, const std::string& input, const Settings& s,
                       const std::vector<std::string>& modules) {
  const std::string in_dir = dir_of_input(ck, input);
  const nlohmann::json config = read_config(in_dir);
  write_text_file(tmp / "adapter_config.json", dump_json(adapter_config(s, config, modules)));
  if (ck.sharded()) {
    nlohmann::json idx;
    idx["metadata"] = ck.index_metadata();
    nlohmann::json wm = nlohmann::json::object();
    for (const auto& kv : ck.entries()) wm[kv.first] = ck.file_name(kv.second.file);
    idx["weight_map"] = wm;
    write_text_file(tmp / "model.safetensors.index.json", dump_json(idx));
  }
  // Config and tokenizer files, so DIR is a loadable base model.
  for (const char* name : kSideFiles) {
    const fs::path src = fs::path(in_dir) / name;
    std::error_code ec;
    if (!fs::is_regular_file(src, ec)) continue;
    if (!fs::copy_file(src, tmp / name, fs::copy_options::none, ec) || ec)
      throw InputError{src.string() + ": cannot copy: " + ec.message()};
  }
}

template <class M>
void write_rowmajor(st::SafetensorsWriter& w, const std::string& name, const M& m) {
  const Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> R = m.template cast<float>();
  w.write(name, R.data(), static_cast<std::uint64_t>(R.size()) * 4);
}

// --- loftq model ------------------------------------------------------------

using RowMatrixF = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

// Run-wide figures from the per-tensor report entries, summed in name order
// so that an unsharded run and a merge of shards report the same numbers.
void add_totals(nlohmann::json& rep, const nlohmann::json& tensors) {
  double weights = 0, code_bits = 0, storage_bits = 0, total_sq = 0;
  for (const auto& e : tensors) {
    if (!e.contains("shape") || !e["shape"].is_array() || e["shape"].size() != 2) continue;
    const double n = e["shape"][0].get<double>() * e["shape"][1].get<double>();
    weights += n;
    if (e.contains("bits") && e["bits"].is_number()) code_bits += n * e["bits"].get<double>();
    if (e.contains("bits_per_weight") && e["bits_per_weight"].is_number())
      storage_bits += n * e["bits_per_weight"].get<double>();
    if (e.contains("sq_err") && e["sq_err"].is_number()) total_sq += e["sq_err"].get<double>();
  }
  rep["average_code_bits"] = weights > 0 ? code_bits / weights : 0.0;
  rep["average_bits_per_weight"] = weights > 0 ? storage_bits / weights : 0.0;  // codes + scales
  rep["total_sq_err"] = total_sq;
}

// One target's LoftQ result (and double quantization), as written out.
struct TargetResult {
  loftq::Result<float> r;
  loftq::DoubleQuantEffect dq;
  double sq_err = 0;  // ||W - Q - A B^T||^2
};

TargetResult compute_target(const st::SafetensorsFile& f, const Target& t, const loftq::Quantizer& q,
                            const loftq::Options& opt, bool double_quant) {
  TargetResult out;
  RowMatrixF W = f.read_matrix(*t.info);
  f.release(*t.info);
  try {
    out.r = loftq::initialize(W, q, opt);
    if (double_quant) out.dq = loftq::double_quantize(W, out.r, opt);
  } catch (const loftq::Error& e) {
    throw InputError{f.path() + ": tensor '" + t.name + "': " + e.what()};
  }
  out.sq_err = loftq::squared_error(out.r, W.cast<double>().squaredNorm());
  return out;
}

int run_model(const ModelArgs& a) {
  const auto t_start = std::chrono::steady_clock::now();
  const fs::path dir = normalize_output(a.output);
  OutputDir out(dir, a.overwrite, {a.input});
  const bool budget = a.bits_budget > 0;
  // Every width this run may use, validated (unsupported -> exit 1) before any work.
  std::map<int, loftq::Quantizer> quantizers;
  for (int b : budget ? kBudgetBits : std::vector<int>{a.bits}) {
    try {
      quantizers.emplace(b, loftq::Quantizer(a.kind, b, a.block_size, /*symmetric=*/true));
    } catch (const loftq::Error& e) {
      throw InputError{"--bits " + std::to_string(b) + ": " + e.what()};
    }
  }
  const st::Checkpoint ck(a.input);
  const Plan plan = plan_targets(ck, a.modules, a.rank, a.input);
  const bool shard_run = a.shard_n > 0;
  std::vector<const Target*> sel;
  for (std::size_t i = 0; i < plan.targets.size(); ++i)
    if (in_shard(i, a.shard_k, a.shard_n)) sel.push_back(&plan.targets[i]);

  Settings s;
  s.j["bits"] = budget ? nlohmann::json(nullptr) : nlohmann::json(a.bits);
  if (budget) s.j["bits_budget"] = a.bits_budget;
  s.j["rank"] = a.rank;
  s.j["iters"] = a.iters;
  s.j["quantizer"] = quantizer_name(a.kind);
  s.j["block_size"] = a.block_size;
  s.j["scale"] = scale_name(a.scale_search);
  s.j["start"] = start_name(a.start);
  s.j["double_quant"] = a.double_quant;
  s.j["lora_alpha"] = a.lora_alpha > 0 ? a.lora_alpha : static_cast<double>(a.rank);
  s.j["svd"] = loftq::to_string(a.svd);
  s.j["seed"] = a.seed;
  s.j["target_modules"] = a.modules;
  s.j["packed"] = a.packed;

  loftq::Options opt;
  opt.rank = a.rank;
  opt.iterations = a.iters;
  opt.svd.method = a.svd;
  opt.svd.seed = a.seed;
  opt.start = a.start;
  opt.scale_search = a.scale_search;
  opt.threads = a.threads;
#ifdef _OPENMP
  if (a.threads > 0) omp_set_num_threads(a.threads);
#endif

  const std::size_t runs_per_target = budget ? kBudgetBits.size() + 1 : 1;
  Progress progress(sel.size() * runs_per_target, a.quiet);
  progress.update(0, "");
  std::size_t done = 0;

  // Mixed precision: measure every target at every width, then allocate.
  // Only the errors are kept (one tensor in memory at a time, as without a
  // budget); the chosen width is recomputed when it is written, which
  // initialize's determinism makes bit-identical to the measured run. Nothing
  // is on disk yet, so a signal here simply ends the process.
  std::map<std::string, int> bits_of;
  std::map<std::string, std::vector<double>> measured;
  loftq::BitAllocation alloc;
  if (budget) {
    std::vector<loftq::MatrixErrors> errs;
    for (const Target* t : sel) {
      loftq::MatrixErrors me;
      me.numel = static_cast<std::int64_t>(t->rows * t->cols);
      for (int b : kBudgetBits) {
        me.sq_error.push_back(compute_target(ck.file(t->file), *t, quantizers.at(b), opt, a.double_quant).sq_err);
        progress.update(++done, t->name + " @ " + std::to_string(b) + " bits");
      }
      measured[t->name] = me.sq_error;
      errs.push_back(std::move(me));
    }
    try {
      alloc = loftq::allocate_bits(errs, kBudgetBits, a.bits_budget);
    } catch (const loftq::Error& e) {
      throw InputError{std::string("--bits-budget: ") + e.what()};
    }
    for (std::size_t i = 0; i < sel.size(); ++i) bits_of[sel[i]->name] = alloc.bits[i];
  } else {
    for (const Target* t : sel) bits_of[t->name] = a.bits;
  }

  begin_publishing();  // from here a signal only raises a flag; we clean up
  out.create();
  Writers w = open_writers(out.tmp(), ck, sel, shard_run, s, bits_of);
  std::set<std::string> selected;
  for (const Target* t : sel) selected.insert(t->name);
  std::map<std::string, const Target*> by_name;
  for (const Target& t : plan.targets) by_name[t.name] = &t;

  nlohmann::json tensors = nlohmann::json::object();
  double sum_err = 0, sum_qlora = 0;
  auto process = [&](const Target& t) {
    const st::SafetensorsFile& f = ck.file(t.file);
    const int bits = bits_of.at(t.name);
    const auto t0 = std::chrono::steady_clock::now();
    TargetResult tr = compute_target(f, t, quantizers.at(bits), opt, a.double_quant);
    loftq::Result<float>& r = tr.r;
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    st::SafetensorsWriter& bw = *w.base[w.base_of.at(t.name)];
    bw.write_float(t.name, r.Q.data(), static_cast<std::uint64_t>(r.Q.size()), t.info->dtype);
    r.Q.resize(0, 0);
    const loftq::PeftLora<float> p = loftq::to_peft(r, s.alpha());
    write_rowmajor(*w.adapter, t.lora_a(), p.lora_A);
    write_rowmajor(*w.adapter, t.lora_b(), p.lora_B);
    if (w.packed) {
      const loftq::PackedMatrix& P = r.packed;
      w.packed->write(t.name + ".qcodes", P.codes.data(), P.codes.size());
      if (a.double_quant) {
        w.packed->write(t.name + ".qscales_q", P.scale_dq.codes.data(), P.scale_dq.codes.size());
        w.packed->write(t.name + ".qscales_absmax", P.scale_dq.absmax.data(), P.scale_dq.absmax.size() * 4);
        w.packed->write(t.name + ".qscales_mean", &P.scale_dq.mean, 4);
      } else {
        w.packed->write(t.name + ".qscales", P.scales.data(), P.scales.size() * 4);
      }
    }
    nlohmann::json e;
    e["shape"] = {t.rows, t.cols};
    e["dtype"] = st::dtype_name(t.info->dtype);
    e["module"] = t.module;
    e["bits"] = bits;
    e["rank"] = a.rank;
    e["iterations_run"] = r.history.size() - (a.double_quant ? 1 : 0);
    e["best_iteration"] = r.best_iteration;
    e["history"] = r.history;
    e["rel_err"] = r.error();
    e["sq_err"] = tr.sq_err;
    e["qlora_rel_err"] = r.qlora_error;
    e["bits_per_weight"] = r.packed.bits_per_weight();
    if (a.double_quant) e["double_quant"] = double_quant_json(tr.dq);
    if (budget) {
      nlohmann::json c = nlohmann::json::object();
      for (std::size_t j = 0; j < kBudgetBits.size(); ++j) c[std::to_string(kBudgetBits[j])] = measured.at(t.name)[j];
      e["candidate_sq_err"] = c;
    }
    e["seconds"] = seconds;
    tensors[t.name] = e;
    sum_err += r.error();
    sum_qlora += r.qlora_error;
    ++done;
    progress.update(done, t.name);
    check_interrupt();
  };

  if (shard_run) {
    for (const Target* t : sel) process(*t);
  } else {
    for (std::size_t fi = 0; fi < ck.num_files(); ++fi) {
      const st::SafetensorsFile& f = ck.file(fi);
      for (const st::TensorInfo& t : f.tensors()) {
        if (selected.count(t.name))
          process(*by_name.at(t.name));
        else
          copy_tensor(f, t, *w.base[fi], t.name);
      }
    }
  }
  w.commit();

  const double total = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();
  nlohmann::json rep;
  rep["version"] = version_string();
  rep["input"] = a.input;
  rep["settings"] = s.j;
  rep["threads"] = effective_threads(a.threads);
  rep["target_modules_matched"] = plan.modules;
  rep["num_targets"] = plan.targets.size();
  if (shard_run) rep["shard"] = {{"index", a.shard_k}, {"count", a.shard_n}};
  add_totals(rep, tensors);
  std::map<int, int> widths;
  for (const auto& kv : bits_of) ++widths[kv.second];
  if (budget) {
    double at_min = 0;
    for (const auto& kv : measured) at_min += kv.second.front();
    nlohmann::json counts = nlohmann::json::object();
    for (const auto& kv : widths) counts[std::to_string(kv.first)] = kv.second;
    rep["bits_allocation"] = {{"budget", a.bits_budget},
                              {"candidates", kBudgetBits},
                              {"solver", "exact multiple-choice knapsack (dynamic programming)"},
                              {"exact", alloc.exact},
                              {"gap_bits", alloc.gap_bits},
                              {"average_code_bits", alloc.average_bits},
                              {"total_sq_err", alloc.total_sq_error},
                              {"total_sq_err_all_" + std::to_string(kBudgetBits.front()) + "_bit", at_min},
                              {"tensors_per_width", counts}};
  }
  rep["tensors"] = tensors;
  rep["seconds"] = total;
  write_text_file(out.tmp() / kReportFile, dump_json(rep));
  if (!shard_run) write_full_extras(out.tmp(), ck, a.input, s, plan.modules);
  out.publish();

  if (!a.quiet) {
    const double k = sel.empty() ? 1.0 : static_cast<double>(sel.size());
    std::printf("loftq %s: %s -> %s: %zu of %zu target tensors%s, mean rel. error %.6f (QLoRA %.6f), %.1f s\n",
                version_string().c_str(), a.input.c_str(), dir.c_str(), sel.size(), plan.targets.size(),
                shard_run ? (" (shard " + std::to_string(a.shard_k) + "/" + std::to_string(a.shard_n) + ")").c_str()
                          : "",
                sum_err / k, sum_qlora / k, total);
    if (budget) {
      std::string mix;
      for (const auto& kv : widths)
        mix += (mix.empty() ? "" : ", ") + std::to_string(kv.second) + " at " + std::to_string(kv.first) + " bits";
      std::printf("  bit budget %.4g: %s; average %.4f code bits per weight (%.4f with scales)\n", a.bits_budget,
                  mix.c_str(), rep["average_code_bits"].get<double>(), rep["average_bits_per_weight"].get<double>());
    }
    std::fflush(stdout);
  }
  return kExitOk;
}

// --- loftq merge ------------------------------------------------------------

struct MergeArgs {
  std::string input, output;
  std::vector<std::string> shards;
  bool quiet = false, overwrite = false;
};

constexpr OptSpec kMergeOptions[] = {
    {"--input", true}, {"--shards", true}, {"--output", true}, {"--quiet", false}, {"--overwrite", false},
};

MergeArgs parse_merge_args(const std::vector<std::string>& argv) {
  MergeArgs a;
  parse_flags(argv, kMergeOptions, [&](const std::string& opt, const std::string& v) {
    if (opt == "--input" || opt == "--output") {
      if (v.empty()) throw UsageError{opt + " needs a non-empty path"};
      (opt == "--input" ? a.input : a.output) = v;
    } else if (opt == "--shards") {
      a.shards = split_list(opt, v);
    } else if (opt == "--quiet") {
      a.quiet = true;
    } else if (opt == "--overwrite") {
      a.overwrite = true;
    }
  });
  if (a.input.empty()) throw UsageError{"missing --input"};
  if (a.shards.empty()) throw UsageError{"missing --shards"};
  if (a.output.empty()) throw UsageError{"missing --output"};
  return a;
}

nlohmann::json read_report(const std::string& dir) {
  const fs::path p = fs::path(dir) / kReportFile;
  std::error_code ec;
  if (!fs::is_regular_file(p, ec)) throw InputError{p.string() + ": missing or not a regular file"};
  std::FILE* f = std::fopen(p.c_str(), "rb");
  if (!f) throw InputError{p.string() + ": cannot open: " + std::strerror(errno)};
  std::string text;
  char buf[65536];
  std::size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) {
    text.append(buf, n);
    if (text.size() > (std::size_t{256} << 20)) {
      std::fclose(f);
      throw InputError{p.string() + ": too large"};
    }
  }
  std::fclose(f);
  nlohmann::json j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (!j.is_object() || !j.contains("shard") || !j["shard"].is_object() || !j.contains("settings") ||
      !j["settings"].is_object() || !j.contains("tensors") || !j["tensors"].is_object())
    throw InputError{p.string() + ": not the report of a 'loftq model --shard' run"};
  return j;
}

int run_merge(const MergeArgs& a) {
  const auto t_start = std::chrono::steady_clock::now();
  const fs::path dir = normalize_output(a.output);
  std::vector<std::string> inputs = a.shards;
  inputs.push_back(a.input);
  OutputDir out(dir, a.overwrite, inputs);

  const std::size_t n = a.shards.size();
  std::vector<nlohmann::json> reps;
  for (const std::string& d : a.shards) reps.push_back(read_report(d));
  Settings s;
  s.j = reps[0]["settings"];
  std::vector<bool> have(n, false);
  try {
    for (std::size_t i = 0; i < n; ++i) {
      const nlohmann::json& sh = reps[i]["shard"];
      const std::int64_t k = sh.at("index").get<std::int64_t>(), cnt = sh.at("count").get<std::int64_t>();
      if (cnt != static_cast<std::int64_t>(n))
        throw InputError{a.shards[i] + ": is shard " + std::to_string(k) + " of " + std::to_string(cnt) + " but " +
                         std::to_string(n) + " shard directories were given"};
      if (k < 1 || k > cnt || have[static_cast<std::size_t>(k - 1)])
        throw InputError{a.shards[i] + ": shard index " + std::to_string(k) + " is out of range or repeated"};
      have[static_cast<std::size_t>(k - 1)] = true;
      if (reps[i]["settings"] != s.j)
        throw InputError{a.shards[i] + ": settings differ from " + a.shards[0] + "'s"};
    }
    (void)s.bits();
    (void)s.rank();
    (void)s.alpha();
    (void)s.packed();
    (void)s.modules();
  } catch (const nlohmann::json::exception& e) {
    throw InputError{std::string("malformed shard report: ") + e.what()};
  }
  try {
    (void)s.quantizer(s.bits());
    (void)s.j.at("block_size").get<std::uint64_t>();
  } catch (const std::exception& e) {
    throw InputError{std::string("shard settings: ") + e.what()};
  }

  const st::Checkpoint ck(a.input);
  const Plan plan = plan_targets(ck, s.modules(), static_cast<Eigen::Index>(s.rank()), a.input);
  std::vector<const Target*> all;
  for (const Target& t : plan.targets) all.push_back(&t);

  // Which shard holds each target; every target exactly once.
  std::vector<std::unique_ptr<st::SafetensorsFile>> smodel, sadapter, spacked;
  std::map<std::string, std::size_t> owner;
  nlohmann::json tensors = nlohmann::json::object();
  for (std::size_t i = 0; i < n; ++i) {
    const fs::path d(a.shards[i]);
    smodel.push_back(std::make_unique<st::SafetensorsFile>((d / kShardModelFile).string()));
    sadapter.push_back(std::make_unique<st::SafetensorsFile>((d / kAdapterFile).string()));
    if (s.packed()) spacked.push_back(std::make_unique<st::SafetensorsFile>((d / kPackedFile).string()));
    for (auto it = reps[i]["tensors"].begin(); it != reps[i]["tensors"].end(); ++it) {
      if (!owner.emplace(it.key(), i).second)
        throw InputError{a.shards[i] + ": tensor '" + it.key() + "' was also produced by another shard"};
      tensors[it.key()] = it.value();
    }
  }
  auto expect = [&](const st::SafetensorsFile& f, const std::string& name, st::Dtype dt,
                    const std::vector<std::uint64_t>& shape) -> const st::TensorInfo& {
    const st::TensorInfo* t = f.find(name);
    if (!t) throw InputError{f.path() + ": missing tensor '" + name + "'"};
    if (t->dtype != dt || t->shape != shape)
      throw InputError{f.path() + ": tensor '" + name + "' has the wrong dtype or shape"};
    return *t;
  };
  for (const Target& t : plan.targets)
    if (!owner.count(t.name)) throw InputError{a.input + ": target tensor '" + t.name + "' is in none of the shards"};
  if (owner.size() != plan.targets.size())
    throw InputError{"the shards hold tensors that are not targets of " + a.input};
  // Each tensor's width as its shard reported it (all equal to the settings'
  // today: a --bits-budget run cannot be sharded).
  std::map<std::string, int> bits_of;
  for (const Target& t : plan.targets) {
    const nlohmann::json& e = tensors[t.name];
    const int b = e.contains("bits") && e["bits"].is_number_integer() ? e["bits"].get<int>() : s.bits();
    if (b != s.bits()) throw InputError{"shard report: tensor '" + t.name + "' has bits " + std::to_string(b) +
                                        ", the settings say " + std::to_string(s.bits())};
    bits_of[t.name] = b;
  }

  begin_publishing();
  out.create();
  Writers w = open_writers(out.tmp(), ck, all, /*shard_run=*/false, s, bits_of);
  const std::uint64_t r = static_cast<std::uint64_t>(s.rank());
  for (std::size_t fi = 0; fi < ck.num_files(); ++fi) {
    const st::SafetensorsFile& f = ck.file(fi);
    for (const st::TensorInfo& t : f.tensors()) {
      const auto o = owner.find(t.name);
      if (o == owner.end()) {
        copy_tensor(f, t, *w.base[fi], t.name);
        continue;
      }
      const std::size_t i = o->second;
      copy_tensor(*smodel[i], expect(*smodel[i], t.name, t.dtype, t.shape), *w.base[fi], t.name);
    }
  }
  for (const Target& t : plan.targets) {
    const std::size_t i = owner.at(t.name);
    copy_tensor(*sadapter[i], expect(*sadapter[i], t.lora_a(), st::Dtype::F32, {r, t.cols}), *w.adapter, t.lora_a());
    copy_tensor(*sadapter[i], expect(*sadapter[i], t.lora_b(), st::Dtype::F32, {t.rows, r}), *w.adapter, t.lora_b());
    if (w.packed)
      for (const st::TensorDecl& d : packed_tensors(t, bits_of.at(t.name), s))
        copy_tensor(*spacked[i], expect(*spacked[i], d.name, d.dtype, d.shape), *w.packed, d.name);
  }
  w.commit();

  const double total = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();
  double shard_seconds = 0;
  for (const auto& rp : reps)
    if (rp.contains("seconds") && rp["seconds"].is_number()) shard_seconds += rp["seconds"].get<double>();
  nlohmann::json rep;
  rep["version"] = version_string();
  rep["input"] = a.input;
  rep["settings"] = s.j;
  rep["target_modules_matched"] = plan.modules;
  rep["num_targets"] = plan.targets.size();
  rep["merged_shards"] = n;
  add_totals(rep, tensors);
  rep["tensors"] = tensors;
  rep["seconds"] = total;
  rep["shard_seconds"] = shard_seconds;
  write_text_file(out.tmp() / kReportFile, dump_json(rep));
  write_full_extras(out.tmp(), ck, a.input, s, plan.modules);
  out.publish();
  if (!a.quiet) {
    std::printf("loftq %s: merged %zu shards of %s -> %s (%zu target tensors), %.1f s\n", version_string().c_str(), n,
                a.input.c_str(), dir.c_str(), plan.targets.size(), total);
    std::fflush(stdout);
  }
  return kExitOk;
}

int main_impl(int argc, char** argv) {
  std::vector<std::string> args(argv + (argc > 0 ? 1 : 0), argv + argc);
  if (args.empty()) {
    std::fputs(usage_text().c_str(), stderr);
    return kExitUsage;
  }
  const std::string& cmd = args[0];
  if (cmd == "-h" || cmd == "--help" || cmd == "help") {
    std::fputs(usage_text().c_str(), stdout);
    return kExitOk;
  }
  if (cmd == "--version" || cmd == "version") {
    std::printf("loftq %s\n", version_string().c_str());
    return kExitOk;
  }
  if (cmd != "init" && cmd != "model" && cmd != "merge") throw UsageError{"unknown command '" + cmd + "'"};
  std::vector<std::string> rest(args.begin() + 1, args.end());
  for (const std::string& s : rest) {
    if (s == "-h" || s == "--help") {
      std::fputs(usage_text().c_str(), stdout);
      return kExitOk;
    }
    if (s == "--version") {
      std::printf("loftq %s\n", version_string().c_str());
      return kExitOk;
    }
  }
  if (cmd == "model") {
    const ModelArgs a = parse_model_args(rest);
    install_signal_handlers();
    return run_model(a);
  }
  if (cmd == "merge") {
    const MergeArgs a = parse_merge_args(rest);
    install_signal_handlers();
    return run_merge(a);
  }
  const Args a = parse_init_args(rest);
  install_signal_handlers();
  return run_init(a);
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return main_impl(argc, argv);
  } catch (const UsageError& e) {
    std::fprintf(stderr, "loftq: error: %s (see 'loftq --help')\n", one_line(e.msg).c_str());
    return kExitUsage;
  } catch (const InputError& e) {
    print_error(e.msg);
  } catch (const Interrupted&) {
    print_error("interrupted; no output written");
    return kExitInterrupted;
  } catch (const loftq::Error& e) {
    print_error(e.what());
  } catch (const std::bad_alloc&) {
    print_error("out of memory");
  } catch (const std::exception& e) {
    print_error(e.what());
  } catch (...) {
    print_error("unknown failure");
  }
  return kExitBadInput;
}
