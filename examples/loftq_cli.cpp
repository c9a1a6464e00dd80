// loftq: the command-line tool.
//
//   loftq init --input W.npy --output DIR [--bits 4] [--rank 16] [--iters 5] ...
//
// reads one 2-D weight matrix from a .npy file, runs loftq::initialize and
// writes DIR/Q.npy, DIR/A.npy, DIR/B.npy and DIR/report.json (see usage()).
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

const char* const kUsage =
    "usage: loftq init --input W.npy --output DIR [options]\n"
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
    "  --scale absmax        block scale (only absmax for now)\n"
    "  --svd exact|randomized  truncated SVD method (default randomized)\n"
    "  --seed N              seed of the randomized SVD, 0..2^64-1 (default 0)\n"
    "  --start zero|svd      zero: LoftQ's A = B = 0 start; svd: start from the\n"
    "                        top-r SVD of W (default zero)\n"
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
    "  130  interrupted (SIGINT/SIGTERM/SIGHUP); no output is written\n";

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
  loftq::Start start = loftq::Start::zero;
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

constexpr OptSpec kOptions[] = {
    {"--input", true},  {"--output", true},     {"--bits", true},  {"--rank", true},    {"--iters", true},
    {"--quantizer", true}, {"--block-size", true}, {"--scale", true}, {"--svd", true},  {"--seed", true},
    {"--start", true},  {"--threads", true},    {"--last", false}, {"--quiet", false},
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
    if (v != "absmax") throw UsageError{"invalid value '" + v + "' for --scale: only absmax is supported"};
  } else if (opt == "--start") {
    if (v == "zero")
      a.start = loftq::Start::zero;
    else if (v == "svd")
      a.start = loftq::Start::svd;
    else
      throw UsageError{"invalid value '" + v + "' for --start: expected zero or svd"};
  } else if (opt == "--last") {
    a.keep_best = false;
  } else if (opt == "--quiet") {
    a.quiet = true;
  }
}

Args parse_init_args(const std::vector<std::string>& argv) {
  Args a;
  std::set<std::string> seen;
  for (std::size_t i = 0; i < argv.size(); ++i) {
    const std::string& arg = argv[i];
    if (arg.size() < 3 || arg.compare(0, 2, "--") != 0)
      throw UsageError{"unexpected argument '" + arg + "'"};
    const std::size_t eq = arg.find('=');
    const std::string name = arg.substr(0, eq);
    const OptSpec* spec = nullptr;
    for (const OptSpec& o : kOptions)
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
    apply(a, name, value);
  }
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

int effective_threads(int requested) {
#ifdef _OPENMP
  return requested > 0 ? requested : omp_get_max_threads();
#else
  (void)requested;
  return 1;
#endif
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
  opt.keep_best = a.keep_best;
  opt.threads = a.threads;
#ifdef _OPENMP
  if (a.threads > 0) omp_set_num_threads(a.threads);
#endif

  const auto t0 = std::chrono::steady_clock::now();
  loftq::Result<float> r;
  try {
    r = loftq::initialize(W, quantizer, opt);
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
  rep["scale"] = "absmax";
  rep["svd"] = loftq::to_string(a.svd);
  rep["seed"] = a.seed;
  rep["start"] = a.start == loftq::Start::zero ? "zero" : "svd";
  rep["threads"] = effective_threads(a.threads);
  rep["keep_best"] = a.keep_best;
  rep["best_iteration"] = r.best_iteration;
  rep["history"] = r.history;
  rep["rel_err"] = r.error();
  rep["qlora_rel_err"] = r.qlora_error;
  rep["bits_per_weight"] = r.packed.bits_per_weight();
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
    std::printf("  %s%d, block %ld, rank %ld, svd %s, start %s, seed %llu, threads %d\n", quantizer_name(a.kind),
                a.bits, static_cast<long>(a.block_size), static_cast<long>(a.rank), loftq::to_string(a.svd),
                a.start == loftq::Start::zero ? "zero" : "svd", static_cast<unsigned long long>(a.seed),
                effective_threads(a.threads));
    std::printf("  QLoRA  rel. error %.6f\n", r.qlora_error);
    for (std::size_t t = 0; t < r.history.size(); ++t)
      std::printf("  iter %-2zu rel. error %.6f%s\n", t + 1, r.history[t],
                  static_cast<int>(t + 1) == r.best_iteration ? "  <- returned" : "");
    std::printf("  returned iteration %d (%s), rel. error %.6f; %.3f s\n", r.best_iteration,
                a.keep_best ? "best" : "last", r.error(), seconds);
    std::fflush(stdout);
  }
  return kExitOk;
}

int main_impl(int argc, char** argv) {
  std::vector<std::string> args(argv + (argc > 0 ? 1 : 0), argv + argc);
  if (args.empty()) {
    std::fputs(kUsage, stderr);
    return kExitUsage;
  }
  const std::string& cmd = args[0];
  if (cmd == "-h" || cmd == "--help" || cmd == "help") {
    std::fputs(kUsage, stdout);
    return kExitOk;
  }
  if (cmd == "--version" || cmd == "version") {
    std::printf("loftq %s\n", version_string().c_str());
    return kExitOk;
  }
  if (cmd != "init") throw UsageError{"unknown command '" + cmd + "'"};
  std::vector<std::string> rest(args.begin() + 1, args.end());
  for (const std::string& s : rest) {
    if (s == "-h" || s == "--help") {
      std::fputs(kUsage, stdout);
      return kExitOk;
    }
    if (s == "--version") {
      std::printf("loftq %s\n", version_string().c_str());
      return kExitOk;
    }
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
