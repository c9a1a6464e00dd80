#include "checkpoint_plan.hpp"

#include "errors.hpp"
#include "path_safety.hpp"

#include <loftq/io/file.hpp>
#include <loftq/io/strict_json.hpp>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <cmath>
#include <cstdio>
#include <limits>
#include <set>

namespace loftq_cli {

namespace {

// The module of a weight when the tensor is `<prefix>.<module>.weight` with
// module in `modules`; else "".
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

std::string dir_of_input(const io::Checkpoint& ck, const std::string& input) {
  if (!ck.dir().empty()) return ck.dir();
  const fs::path p = fs::path(input).parent_path();
  return p.empty() ? std::string(".") : p.string();
}

constexpr std::uint64_t kConfigMaxBytes = std::uint64_t{16} << 20;

// config.json's bytes parsed through the strict, bounded-depth reader; an
// InputError naming `path` when it cannot be used.
nlohmann::json parse_config(const std::string& path, const std::string& text) {
  if (text.size() > kConfigMaxBytes)
    throw InputError{path + ": larger than 16 MiB (" + std::to_string(text.size()) +
                     " bytes); not a model configuration loftq reads"};
  try {
    nlohmann::json j = loftq::io::parse_json_strict(text, path, loftq::io::kConfigJsonDepth);
    if (!j.is_object()) throw InputError{path + ": not a JSON object"};
    return j;
  } catch (const loftq::Error& e) {
    throw InputError{e.what()};
  }
}

// What transformers needs to load the targets as they are: every other 2-D
// float weight stays a plain nn.Linear (or embedding), so it is skipped.
nlohmann::json bnb_quantization_config(const io::Checkpoint& ck, const Settings& s,
                                       const std::vector<Target>& targets) {
  std::set<std::string> target_names;
  std::vector<std::string> quantized, others;
  for (const Target& t : targets) {
    target_names.insert(t.name);
    quantized.push_back(io::lora_module_path(t.name));
  }
  static const std::string suffix = ".weight";
  for (const auto& kv : ck.entries()) {
    const io::TensorInfo& t = *kv.second.info;
    const std::string& n = kv.first;
    if (t.shape.size() != 2 || !io::is_float_dtype(t.dtype) || target_names.count(n) || n.size() <= suffix.size() ||
        n.compare(n.size() - suffix.size(), suffix.size(), suffix) != 0)
      continue;
    others.push_back(n.substr(0, n.size() - suffix.size()));
  }
  try {
    return io::bnb_quantization_config(s.packing.double_quant, targets.front().info->dtype,
                                       io::bnb_skip_modules(quantized, others));
  } catch (const loftq::Error& e) {
    throw InputError{e.what()};
  }
}

// A tokenizer of the largest vocabularies is tens of MB; the bound keeps a
// hostile side file from being held in memory for the run.
constexpr std::uint64_t kSideFileMaxBytes = std::uint64_t{256} << 20;

constexpr const char* kSideFiles[] = {"config.json",           "generation_config.json",  "tokenizer.json",
                                      "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model"};

// Refuses a side file that is a symbolic link leading out of the input: it
// would be copied into the output as a regular file. Allowed: a target
// inside the input directory, or, for a Hugging Face cache snapshot
// (.../snapshots/<rev>/), inside that repository's .../blobs/.
void check_side_link(const fs::path& file, const std::string& dir, int dir_fd) {
  // Resolved through the directory held open since the start (Linux's
  // /proc/self/fd), so the link checked is the one then read.
  fs::path via(dir);
  std::error_code ec;
  if (dir_fd >= 0) {
    const fs::path held = "/proc/self/fd/" + std::to_string(dir_fd);
    if (fs::exists(fs::symlink_status(held, ec))) via = held;
  }
  const fs::path at = via / file.filename();
  if (!fs::is_symlink(fs::symlink_status(at, ec))) return;
  const fs::path target = fs::canonical(at, ec);
  if (ec) throw InputError{file.string() + ": a symbolic link that cannot be resolved: " + ec.message()};
  const fs::path in_dir = fs::canonical(via, ec);
  if (ec) throw InputError{dir + ": cannot resolve the input directory: " + ec.message()};
  if (lies_within(target, in_dir)) return;
  if (in_dir.has_parent_path() && in_dir.parent_path().filename() == "snapshots" &&
      lies_within(target, in_dir.parent_path().parent_path() / "blobs"))
    return;
  throw InputError{file.string() + ": a symbolic link to " + target.string() +
                   ", outside the input directory (and not a Hugging Face cache blob); refusing to copy it"};
}

// The bytes of the side file `name` in the held directory `dir_fd` (its path
// `p` when -1); false when it is absent or not a regular file (not copied).
bool read_side_file(int dir_fd, const char* name, const fs::path& p, std::string& bytes) {
  const int fd = dir_fd >= 0 ? ::openat(dir_fd, name, O_RDONLY | O_CLOEXEC | O_NONBLOCK)
                             : ::open(p.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) {
    if (errno == ENOENT || errno == ENOTDIR || errno == ELOOP) return false;
    throw InputError{p.string() + ": cannot open: " + std::strerror(errno)};
  }
  struct Closer {
    int fd;
    ~Closer() { ::close(fd); }
  } closer{fd};
  struct stat st;
  if (::fstat(fd, &st) != 0) throw InputError{p.string() + ": cannot stat: " + std::strerror(errno)};
  if (!S_ISREG(st.st_mode)) return false;
  const std::uint64_t size = static_cast<std::uint64_t>(st.st_size);
  if (size > kSideFileMaxBytes)
    throw InputError{p.string() + ": larger than 256 MiB (" + std::to_string(size) +
                     " bytes); not a configuration or tokenizer file loftq copies"};
  bytes.assign(static_cast<std::size_t>(size), '\0');
  std::size_t done = 0;
  while (done < bytes.size()) {
    const ssize_t r = ::pread(fd, &bytes[done], bytes.size() - done, static_cast<off_t>(done));
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) throw InputError{p.string() + ": read failed: " + std::strerror(errno)};
    if (r == 0) throw InputError{p.string() + ": the file changed while being read"};
    done += static_cast<std::size_t>(r);
  }
  return true;
}

}  // namespace

std::string base_file_name(const io::Checkpoint& ck, std::size_t i) {
  return ck.sharded() ? ck.file_name(i) : std::string("model.safetensors");
}

Plan plan_targets(const io::Checkpoint& ck, const std::vector<std::string>& modules, Eigen::Index rank,
                  const std::string& input) {
  if (rank < 1) throw InputError{input + ": rank " + std::to_string(rank) + " is not a positive integer"};
  Plan p;
  std::set<std::string> used;
  for (const auto& kv : ck.entries()) {  // std::map: sorted by name
    const io::TensorInfo& t = *kv.second.info;
    if (t.shape.size() != 2) continue;
    const std::string m = matched_module(kv.first, modules);
    if (m.empty()) continue;
    if (!io::is_float_dtype(t.dtype))
      throw InputError{input + ": target tensor '" + printable(t.name) + "' has dtype " + io::dtype_name(t.dtype) +
                       "; expected F32, F16, BF16 or F64"};
    const std::uint64_t mn = std::min(t.shape[0], t.shape[1]);
    if (static_cast<std::uint64_t>(rank) > mn)
      throw InputError{input + ": --rank " + std::to_string(rank) + " exceeds min(out, in) = " + std::to_string(mn) +
                       " of target tensor '" + printable(t.name) + "' (" + std::to_string(t.shape[0]) + "x" +
                       std::to_string(t.shape[1]) + ")"};
    if (t.shape[0] > static_cast<std::uint64_t>(std::numeric_limits<int>::max()) ||
        t.shape[1] > static_cast<std::uint64_t>(std::numeric_limits<int>::max()))
      throw InputError{input + ": target tensor '" + printable(t.name) + "' is too large"};
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

Settings Settings::of(const Args& a) {
  Settings s;
  s.j = settings_json(a);
  s.bits = a.bits;
  s.rank = a.rank;
  s.alpha = s.j["lora_alpha"].get<double>();
  s.packed = a.packed;
  s.bnb_nf4 = a.bnb_nf4;
  s.modules = a.modules;
  s.packing = {a.kind, static_cast<std::int64_t>(a.block_size), a.scale_search, a.double_quant};
  return s;
}

Settings Settings::from_report(const nlohmann::json& j) {
  // The option table's rows read their own keys back.
  Settings s = of(args_from_settings(j));
  s.j = j;
  try {
    (void)loftq::Quantizer(s.packing.kind, s.bits, static_cast<Eigen::Index>(s.packing.block_size), true);
  } catch (const loftq::Error& e) {
    throw InputError{std::string("shard settings: ") + e.what()};
  }
  return s;
}

io::BnbTarget bnb_target(const Target& t) { return {t.name, t.rows, t.cols, t.info->dtype}; }

void check_bnb_output(const io::Checkpoint& ck, const std::string& input, const SideFiles& side, const Settings& s,
                      const std::vector<Target>& targets) {
  if (!side.config.is_object())
    throw InputError{"--format bnb-nf4: no config.json next to the input " + input +
                     " (transformers reads quantization_config from it)"};
  for (const Target& t : targets) {
    try {
      (void)io::bnb_dtype_name(t.info->dtype);
    } catch (const loftq::Error& e) {
      throw InputError{input + ": target tensor '" + t.name + "': " + e.what()};
    }
  }
  (void)bnb_quantization_config(ck, s, targets);
}

std::string output_index(const io::Checkpoint& ck, const Settings& s, const std::vector<Target>& targets) {
  nlohmann::json idx;
  idx["metadata"] = ck.index_metadata();
  nlohmann::json wm = nlohmann::json::object();
  for (const auto& kv : ck.entries()) wm[kv.first] = ck.file_name(kv.second.file);
  if (s.bnb_nf4)
    for (const Target& t : targets)
      for (const io::TensorDecl& d : io::bnb_nf4_tensors(bnb_target(t), s.packing.block_size, s.packing.double_quant))
        wm[d.name] = ck.file_name(t.file);
  idx["weight_map"] = std::move(wm);
  return idx.dump(2, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
}

void check_output_index(const io::Checkpoint& ck, const std::string& input, const Settings& s,
                        const std::vector<Target>& targets) {
  if (!ck.sharded()) return;
  const std::size_t n = output_index(ck, s, targets).size();
  if (n > io::kMaxHeaderBytes)
    throw InputError{input + ": the output's model.safetensors.index.json would be " + std::to_string(n) +
                     " bytes, over the limit of " + std::to_string(io::kMaxHeaderBytes) +
                     " bytes of index readers (this tool's included)"};
}

void write_full_extras(StagedOutput& out, const io::Checkpoint& ck, const std::string& input, const SideFiles& side,
                       const Settings& s, const std::vector<std::string>& modules, const std::vector<Target>& targets) {
  nlohmann::json config = side.config;
  io::LoraConfig c;
  c.r = s.rank;
  c.lora_alpha = s.alpha;
  c.target_modules = modules;
  c.task_type = io::peft_task_type(config);
  if (config.is_object() && config.contains("_name_or_path") && config["_name_or_path"].is_string())
    c.base_model_name_or_path = config["_name_or_path"].get<std::string>();
  out.write_file("adapter_config.json",
                 io::adapter_config_json(c).dump(2, ' ', false, nlohmann::json::error_handler_t::replace) + "\n");
  if (ck.sharded()) out.write_file("model.safetensors.index.json", output_index(ck, s, targets));
  // Config and tokenizer files, so DIR is a loadable base model: the bytes
  // read when the input was opened.
  for (const auto& f : side.files)
    if (!(s.bnb_nf4 && f.first == "config.json")) out.write_file(f.first, f.second);
  if (s.bnb_nf4) {
    if (!config.is_object()) throw InputError{"--format bnb-nf4: no config.json next to the input " + input};
    config["quantization_config"] = bnb_quantization_config(ck, s, targets);
    out.write_file("config.json", config.dump(2, ' ', false, nlohmann::json::error_handler_t::replace) + "\n");
  }
}

std::vector<std::string> checkpoint_inputs(const io::Checkpoint& ck, const std::string& input) {
  std::vector<std::string> in;
  for (std::size_t i = 0; i < ck.num_files(); ++i) in.push_back(ck.file(i).path());
  const std::string dir = dir_of_input(ck, input);
  std::error_code ec;
  if (ck.sharded()) in.push_back((fs::path(dir) / "model.safetensors.index.json").string());
  for (const char* name : kSideFiles) {
    const fs::path p = fs::path(dir) / name;
    if (fs::exists(p, ec)) in.push_back(p.string());
  }
  if (!ck.dir().empty()) in.push_back(ck.dir());
  return in;
}

SideFiles read_side_files(const io::Checkpoint& ck, const std::string& input, const InputIdentity& id) {
  SideFiles side;
  const std::string dir = dir_of_input(ck, input);
  for (const char* name : kSideFiles) {
    const fs::path p = fs::path(dir) / name;
    check_side_link(p, dir, id.dir_fd());
    std::string bytes;
    if (!read_side_file(id.dir_fd(), name, p, bytes)) continue;
    if (std::string(name) == "config.json") side.config = parse_config(p.string(), bytes);
    side.files.emplace_back(name, std::move(bytes));
  }
  return side;
}

InputIdentity::InputIdentity(const std::string& input) {
  struct stat st;
  if (::stat(input.c_str(), &st) != 0) return;
  dir_ = input;
  if (!S_ISDIR(st.st_mode)) {
    const fs::path parent = fs::path(input).parent_path();
    dir_ = parent.empty() ? std::string(".") : parent.string();
  }
  // O_PATH: enough to look entries up and open them, without read permission
  // on the directory itself.
  dir_fd_ = ::open(dir_.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC);
  struct stat ds;
  if (dir_fd_ >= 0 && ::fstat(dir_fd_, &ds) == 0) {
    dir_dev_ = static_cast<std::uint64_t>(ds.st_dev);
    dir_ino_ = static_cast<std::uint64_t>(ds.st_ino);
    // A directory input is the directory held (not one put at its path after the stat).
    if (S_ISDIR(st.st_mode)) st = ds;
  }
  dev = static_cast<std::uint64_t>(st.st_dev);
  ino = static_cast<std::uint64_t>(st.st_ino);
  known = true;
}

InputIdentity::~InputIdentity() {
  if (dir_fd_ >= 0) ::close(dir_fd_);
}

void check_same_input(const std::string& input, const InputIdentity& before, const io::Checkpoint& ck) {
  const InputError replaced{input +
                            ": replaced while it was being opened; nothing was read from it that a run could use "
                            "(run again once it is in place)"};
  struct stat now;
  if (!before.known || ::stat(input.c_str(), &now) != 0 || static_cast<std::uint64_t>(now.st_dev) != before.dev ||
      static_cast<std::uint64_t>(now.st_ino) != before.ino)
    throw replaced;
  if (before.dir_fd_ < 0) return;
  // The path names the same input again, but it may have been swapped and
  // swapped back meanwhile: every file the checkpoint holds open must be the
  // entry of its name in the directory the side files were read from, which
  // must still be the one the path leads to.
  struct stat ds;
  if (::stat(before.dir_.c_str(), &ds) != 0 || static_cast<std::uint64_t>(ds.st_dev) != before.dir_dev_ ||
      static_cast<std::uint64_t>(ds.st_ino) != before.dir_ino_)
    throw replaced;
  // The index says which files and tensors the checkpoint is: the one read
  // must be the one there now (a directory of hard links of the same shards
  // with another index passes the checks of the files alone).
  struct stat is;
  const bool has_index = ::fstatat(before.dir_fd_, "model.safetensors.index.json", &is, 0) == 0;
  if (!ck.dir().empty() && has_index != ck.sharded()) throw replaced;
  if (ck.sharded() && (static_cast<std::uint64_t>(is.st_dev) != ck.index_device() ||
                       static_cast<std::uint64_t>(is.st_ino) != ck.index_inode()))
    throw replaced;
  for (std::size_t i = 0; i < ck.num_files(); ++i) {
    const io::SafetensorsFile& f = ck.file(i);
    struct stat fs_;
    const std::string name = fs::path(f.path()).filename().string();
    if (::fstatat(before.dir_fd_, name.c_str(), &fs_, 0) != 0 || static_cast<std::uint64_t>(fs_.st_dev) != f.device() ||
        static_cast<std::uint64_t>(fs_.st_ino) != f.inode())
      throw replaced;
  }
}

void check_checkpoint_names(const io::Checkpoint& ck, bool packed) {
  std::vector<std::string> files,
      tool = {kAdapterFile, kReportFile, "adapter_config.json", "model.safetensors.index.json", kMarkerFile};
  if (packed) tool.push_back(kPackedFile);
  for (const char* name : kSideFiles) tool.push_back(name);
  for (std::size_t i = 0; i < ck.num_files(); ++i) files.push_back(base_file_name(ck, i));
  check_output_names(files, tool);
}

namespace {

struct Fnv64 {
  std::uint64_t h = 1469598103934665603ull;
  void bytes(const void* p, std::size_t n) {
    const unsigned char* b = static_cast<const unsigned char*>(p);
    for (std::size_t i = 0; i < n; ++i) {
      h ^= b[i];
      h *= 1099511628211ull;
    }
  }
  void str(const std::string& s) {
    num(s.size());
    bytes(s.data(), s.size());
  }
  void num(std::uint64_t x) { bytes(&x, sizeof x); }
};

}  // namespace

std::string checkpoint_identity(const io::Checkpoint& ck) {
  Fnv64 h;
  h.str(ck.index_metadata().dump());
  h.num(ck.num_files());
  for (std::size_t i = 0; i < ck.num_files(); ++i) {
    const io::SafetensorsFile& f = ck.file(i);
    std::error_code ec;
    h.str(ck.file_name(i));
    h.num(static_cast<std::uint64_t>(fs::file_size(f.path(), ec)));
    for (const auto& kv : f.metadata()) {
      h.str(kv.first);
      h.str(kv.second);
    }
    for (const io::TensorInfo& t : f.tensors()) {
      h.str(t.name);
      h.str(io::dtype_name(t.dtype));
      h.num(t.shape.size());
      for (std::uint64_t d : t.shape) h.num(d);
      h.num(t.begin);
      const std::uint64_t n = t.nbytes(), k = std::min<std::uint64_t>(n, 64);
      h.num(n);
      unsigned char b[64];
      for (std::uint64_t at : {std::uint64_t(0), (n - k) / 2, n - k}) {
        f.read_bytes(t, at, k, b);
        h.bytes(b, k);
      }
    }
  }
  char buf[32];
  std::snprintf(buf, sizeof buf, "fnv1a64:%016llx", static_cast<unsigned long long>(h.h));
  return buf;
}

void check_finite(const io::SafetensorsFile& f, const io::TensorInfo& t) {
  const std::vector<unsigned char> bytes = f.read_bytes(t);
  const unsigned char* b = bytes.data();
  const std::uint64_t n = t.nbytes();
  bool ok = true;
  switch (t.dtype) {
    case io::Dtype::F32:
      for (std::uint64_t i = 0; ok && i + 4 <= n; i += 4) {
        float x;
        std::memcpy(&x, b + i, 4);
        ok = std::isfinite(x);
      }
      break;
    case io::Dtype::F64:
      for (std::uint64_t i = 0; ok && i + 8 <= n; i += 8) {
        double x;
        std::memcpy(&x, b + i, 8);
        ok = std::isfinite(x);
      }
      break;
    case io::Dtype::F16:
      for (std::uint64_t i = 0; ok && i + 2 <= n; i += 2) {
        std::uint16_t x;
        std::memcpy(&x, b + i, 2);
        ok = ((x >> 10) & 0x1f) != 0x1f;  // all-ones exponent: Inf or NaN
      }
      break;
    case io::Dtype::BF16:
      for (std::uint64_t i = 0; ok && i + 2 <= n; i += 2) {
        std::uint16_t x;
        std::memcpy(&x, b + i, 2);
        ok = ((x >> 7) & 0xff) != 0xff;  // likewise
      }
      break;
    default:
      break;
  }
  if (!ok) throw InputError{f.path() + ": tensor '" + printable(t.name) + "' holds NaN or infinite values"};
}

}  // namespace loftq_cli
