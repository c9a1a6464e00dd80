#pragma once
// Reading and writing .safetensors files (POSIX), and sharded checkpoints.
//
// Format: an 8-byte little-endian header length N, N bytes of JSON, then the
// data section. The JSON maps each tensor name to
//   {"dtype": "F32", "shape": [m, n], "data_offsets": [begin, end]}
// (offsets relative to the data section) plus an optional "__metadata__"
// object of string -> string, which is preserved.
//
// Reading validates the whole header before any tensor is touched; tensor
// bytes are read (pread, in bounded chunks) only when asked for, so a stream
// over a large checkpoint keeps a bounded working set. The file stays open,
// so a rename or unlink during a run does not affect it. A file that shrinks
// or is rewritten while open is a clear loftq::Error at the next read (its
// size and modification time are checked on every read), never the SIGBUS a
// memory map would raise on truncation.
//
// The parser faces untrusted bytes. Every defect is a loftq::Error naming the
// file (and the tensor): header length past the end of the file or above
// kMaxHeaderBytes, bad JSON (a NUL byte or a leading byte-order mark
// included), duplicate keys (nlohmann's DOM parser would silently keep the
// last one), unknown keys or dtypes, negative, fractional or overflowing
// shapes, byte counts that disagree with dtype x shape, offsets outside the
// data section, overlapping or leaving gaps (the data section must be covered
// exactly, as the reference implementation requires). Arithmetic on sizes is
// checked for overflow. The header is checked event by event through a SAX
// handler (detail/header_parser.hpp), which stops at the first violation and
// keeps only the tensor table and the metadata strings: time is linear in the
// header and memory stays proportional to what a valid header holds.
//
// Writing (SafetensorsWriter) declares every tensor first, writes the header,
// then accepts tensor bytes in any order and in pieces (pwrite at the known
// offsets), so large outputs are streamed rather than held in memory. The
// file is created under a temporary name next to the target and renamed into
// place by commit(); a writer destroyed without commit() removes it.

#include <Eigen/Core>
#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <limits>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "loftq/error.hpp"
#include "loftq/io/detail/checkpoint_index.hpp"
#include "loftq/io/detail/header_parser.hpp"
#include "loftq/io/detail/header_writer.hpp"
#include "loftq/io/detail/posix_file.hpp"

namespace loftq {
namespace io {

// Dtype, dtype_name, dtype_size, parse_dtype, is_float_dtype and the float
// conversions (half_to_float, ..., to_float, from_float) are in
// loftq/io/dtype.hpp; TensorInfo in loftq/io/tensor_info.hpp; kMaxHeaderBytes
// in detail/header_parser.hpp.
// Reading a sharded checkpoint's index is detail/checkpoint_index.hpp;
// TensorDecl and the writer's header are in detail/header_writer.hpp.

// ---------------------------------------------------------------------------
// Reading

class SafetensorsFile {
 public:
  SafetensorsFile() = default;
  explicit SafetensorsFile(const std::string& path) { open(path); }
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;
  SafetensorsFile(SafetensorsFile&& o) noexcept { swap(o); }
  SafetensorsFile& operator=(SafetensorsFile&& o) noexcept {
    if (this != &o) {
      close();
      swap(o);
    }
    return *this;
  }
  ~SafetensorsFile() { close(); }

  void open(const std::string& path) {
    close();
    path_ = path;
    file_.open(path);
    try {
      size_ = file_.size();
      if (size_ < 8)
        ::loftq::detail::fail(Errc::parse_error, path + ": truncated: " + std::to_string(size_) +
                                                     " bytes, shorter than the 8-byte header length");
      // The header alone: its length, then at most kMaxHeaderBytes of JSON
      // (parse_header rejects a longer one before looking at it).
      unsigned char len[8];
      file_.pread_exact(len, 0, 8);
      std::uint64_t n = 0;
      for (int i = 7; i >= 0; --i) n = (n << 8) | len[i];
      const std::uint64_t head = 8 + std::min({n, size_ - 8, static_cast<std::uint64_t>(kMaxHeaderBytes)});
      std::vector<unsigned char> header(static_cast<std::size_t>(head));
      file_.pread_exact(header.data(), 0, head);
      detail::parse_header(header.data(), size_, path_, data_offset_, tensors_, index_, metadata_);
    } catch (...) {
      close();
      throw;
    }
  }

  void close() noexcept {
    file_.close();
    size_ = 0;
    data_offset_ = 0;
    tensors_.clear();
    index_.clear();
    metadata_.clear();
  }

  const std::string& path() const { return path_; }
  std::uint64_t file_size() const { return size_; }
  // The device and inode of the file read (held open since open()).
  std::uint64_t device() const { return file_.device(); }
  std::uint64_t inode() const { return file_.inode(); }
  std::uint64_t data_offset() const { return data_offset_; }
  // In data-section order.
  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  const TensorInfo* find(const std::string& name) const {
    const auto it = index_.find(name);
    return it == index_.end() ? nullptr : &tensors_[it->second];
  }
  const TensorInfo& at(const std::string& name) const {
    const TensorInfo* t = find(name);
    if (!t) ::loftq::detail::fail(Errc::invalid_argument, path_ + ": no tensor '" + name + "'");
    return *t;
  }
  // `n` of the tensor's raw bytes (little endian) from byte `offset` of the
  // tensor, into dst. The range must lie inside the tensor.
  void read_bytes(const TensorInfo& t, std::uint64_t offset, std::uint64_t n, void* dst) const {
    ::loftq::detail::require(offset <= t.nbytes() && n <= t.nbytes() - offset, Errc::invalid_argument,
                             path_ + ": read past the end of tensor '" + t.name + "'");
    file_.pread_exact(static_cast<unsigned char*>(dst), data_offset_ + t.begin + offset, n);
  }
  // All of the tensor's raw bytes.
  std::vector<unsigned char> read_bytes(const TensorInfo& t) const {
    std::vector<unsigned char> v(static_cast<std::size_t>(t.nbytes()));
    read_bytes(t, 0, t.nbytes(), v.data());
    return v;
  }

  // The tensor converted to float, row-major flattening.
  std::vector<float> read_float(const TensorInfo& t) const {
    require_float(t);
    std::vector<float> v(static_cast<std::size_t>(t.numel));
    convert(t, v.data());
    return v;
  }
  // A 2-D tensor as an (rows x cols) row-major float matrix.
  Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> read_matrix(const TensorInfo& t) const {
    require_float(t);
    ::loftq::detail::require(t.shape.size() == 2, Errc::invalid_argument,
                             path_ + ": tensor '" + t.name + "' is not 2-D");
    ::loftq::detail::require(t.shape[0] <= static_cast<std::uint64_t>(std::numeric_limits<Eigen::Index>::max()) &&
                                 t.shape[1] <= static_cast<std::uint64_t>(std::numeric_limits<Eigen::Index>::max()),
                             Errc::unsupported, path_ + ": tensor '" + t.name + "' is too large");
    Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> M(static_cast<Eigen::Index>(t.shape[0]),
                                                                            static_cast<Eigen::Index>(t.shape[1]));
    convert(t, M.data());
    return M;
  }

 private:
  // Converts the tensor to floats a bounded chunk at a time, so reading it
  // costs one tensor of floats plus a chunk, not a second copy of its bytes.
  void convert(const TensorInfo& t, float* out) const {
    const std::size_t es = dtype_size(t.dtype);
    const std::uint64_t chunk = (std::uint64_t(1) << 20) / es;  // elements per read
    std::vector<unsigned char> buf(static_cast<std::size_t>(std::min<std::uint64_t>(chunk, t.numel) * es));
    for (std::uint64_t i = 0; i < t.numel; i += chunk) {
      const std::uint64_t k = std::min(chunk, t.numel - i);
      read_bytes(t, i * es, k * es, buf.data());
      to_float(t.dtype, buf.data(), static_cast<std::size_t>(k), out + i);
    }
  }

  void swap(SafetensorsFile& o) noexcept {
    std::swap(path_, o.path_);
    std::swap(file_, o.file_);
    std::swap(size_, o.size_);
    std::swap(data_offset_, o.data_offset_);
    std::swap(tensors_, o.tensors_);
    std::swap(index_, o.index_);
    std::swap(metadata_, o.metadata_);
  }

  void require_float(const TensorInfo& t) const {
    ::loftq::detail::require(
        is_float_dtype(t.dtype), Errc::unsupported,
        path_ + ": tensor '" + t.name + "' has dtype " + dtype_name(t.dtype) + ", expected F32, F16, BF16 or F64");
  }

  std::string path_;
  detail::ReadOnlyFile file_;
  std::uint64_t size_ = 0, data_offset_ = 0;
  std::vector<TensorInfo> tensors_;
  std::map<std::string, std::size_t> index_;
  std::map<std::string, std::string> metadata_;
};

// ---------------------------------------------------------------------------
// Checkpoints: one .safetensors file, or a directory holding one or a sharded
// set described by model.safetensors.index.json.

class Checkpoint {
 public:
  struct Entry {
    std::size_t file;  // index into files()
    const TensorInfo* info;
  };

  // PATH: a .safetensors file; or a directory with model.safetensors.index.json,
  // else model.safetensors, else exactly one *.safetensors file.
  explicit Checkpoint(const std::string& path) {
    struct stat st;
    if (::stat(path.c_str(), &st) != 0) ::loftq::detail::fail(Errc::io_error, path + ": " + std::strerror(errno));
    if (!S_ISDIR(st.st_mode)) {
      files_.emplace_back(std::make_unique<SafetensorsFile>(path));
      names_.push_back(base_name(path));
    } else {
      dir_ = path;
      const std::string index = join(path, "model.safetensors.index.json");
      if (::stat(index.c_str(), &st) == 0) {
        open_index(index);
      } else {
        std::string single = join(path, "model.safetensors");
        if (::stat(single.c_str(), &st) != 0) {
          std::vector<std::string> found = detail::list_safetensors(path);
          ::loftq::detail::require(found.size() == 1, Errc::invalid_argument,
                                   path +
                                       ": expected model.safetensors.index.json, model.safetensors or exactly one "
                                       ".safetensors file (found " +
                                       std::to_string(found.size()) + ")");
          single = join(path, found[0]);
        }
        files_.emplace_back(std::make_unique<SafetensorsFile>(single));
        names_.push_back(base_name(single));
      }
    }
    for (std::size_t f = 0; f < files_.size(); ++f)
      for (const TensorInfo& t : files_[f]->tensors()) {
        if (sharded_) {
          const auto w = weight_map_.find(t.name);
          ::loftq::detail::require(
              w != weight_map_.end() && w->second == names_[f], Errc::parse_error,
              files_[f]->path() + ": tensor '" + t.name + "' is not mapped to this file by the index");
        }
        ::loftq::detail::require(entries_.emplace(t.name, Entry{f, &t}).second, Errc::parse_error,
                                 files_[f]->path() + ": tensor '" + t.name + "' appears in more than one shard");
      }
    if (sharded_)
      for (const auto& w : weight_map_)
        ::loftq::detail::require(entries_.count(w.first) == 1, Errc::parse_error,
                                 index_path_ + ": tensor '" + w.first + "' is missing from " + w.second);
  }

  bool sharded() const { return sharded_; }
  const std::string& dir() const { return dir_; }  // empty when PATH was a file
  std::size_t num_files() const { return files_.size(); }
  const SafetensorsFile& file(std::size_t i) const { return *files_[i]; }
  const std::string& file_name(std::size_t i) const { return names_[i]; }  // base name
  // All tensors by name.
  const std::map<std::string, Entry>& entries() const { return entries_; }
  // The index file's "metadata" object (sharded input only).
  const nlohmann::json& index_metadata() const { return index_metadata_; }
  // The index file read (sharded input only): device and inode.
  std::uint64_t index_device() const { return index_device_; }
  std::uint64_t index_inode() const { return index_inode_; }

 private:
  static std::string join(const std::string& dir, const std::string& name) {
    return !dir.empty() && dir.back() == '/' ? dir + name : dir + "/" + name;
  }
  static std::string base_name(const std::string& p) {
    const std::size_t s = p.find_last_of('/');
    return s == std::string::npos ? p : p.substr(s + 1);
  }

  void open_index(const std::string& index) {
    index_path_ = index;
    sharded_ = true;
    detail::ShardIndex si = detail::read_shard_index(index);
    weight_map_ = std::move(si.weight_map);
    index_metadata_ = std::move(si.metadata);
    index_device_ = si.device;
    index_inode_ = si.inode;
    for (const std::string& f : si.shard_names) {
      files_.emplace_back(std::make_unique<SafetensorsFile>(join(dir_, f)));
      names_.push_back(f);
    }
  }

  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::vector<std::string> names_;
  std::map<std::string, Entry> entries_;
  std::map<std::string, std::string> weight_map_;
  std::uint64_t index_device_ = 0, index_inode_ = 0;
  nlohmann::json index_metadata_ = nlohmann::json::object();
  std::string dir_, index_path_;
  bool sharded_ = false;
};

// ---------------------------------------------------------------------------
// Writing

// The length of the header SafetensorsWriter writes for these declarations
// (the value of its 8-byte length field), computed entry by entry without
// building it: a program checks its outputs against kMaxHeaderBytes, which
// every reader enforces, before any work.
inline std::uint64_t safetensors_header_size(const std::vector<TensorDecl>& tensors,
                                             const std::map<std::string, std::string>& metadata = {}) {
  return detail::header_size(tensors, metadata);
}

class SafetensorsWriter {
 public:
  // Creates a temporary file next to `path` and writes the header. Tensors go
  // to the data section in the order declared.
  SafetensorsWriter(std::string path, const std::vector<TensorDecl>& tensors,
                    const std::map<std::string, std::string>& metadata = {})
      : path_(std::move(path)) {
    std::uint64_t pos = 0;  // the data section's size
    const std::string header = detail::make_header(path_, tensors, metadata, slots_, pos);
    data_offset_ = 8 + header.size();
    file_ = std::make_unique<detail::AtomicFile>(path_, data_offset_ + pos);
    unsigned char len[8];
    const std::uint64_t hl = header.size();
    for (int i = 0; i < 8; ++i) len[i] = static_cast<unsigned char>(hl >> (8 * i));
    file_->pwrite_all(len, 8, 0);
    file_->pwrite_all(header.data(), header.size(), 8);
  }
  SafetensorsWriter(const SafetensorsWriter&) = delete;
  SafetensorsWriter& operator=(const SafetensorsWriter&) = delete;

  // Writes `n` bytes of tensor `name` starting at byte `offset` of the tensor.
  void write(const std::string& name, const void* data, std::uint64_t n, std::uint64_t offset = 0) {
    const auto it = slots_.find(name);
    ::loftq::detail::require(it != slots_.end(), Errc::invalid_argument,
                             path_ + ": tensor '" + name + "' was not declared");
    detail::Slot& s = it->second;
    ::loftq::detail::require(offset <= s.bytes && n <= s.bytes - offset, Errc::invalid_argument,
                             path_ + ": write past the end of tensor '" + name + "'");
    file_->pwrite_all(data, n, data_offset_ + s.begin + offset);
    s.written += n;
  }
  // Writes a whole tensor from floats, converting to its declared dtype.
  void write_float(const std::string& name, const float* v, std::uint64_t count, Dtype dtype) {
    const std::size_t chunk = 1 << 16;
    std::vector<unsigned char> buf(chunk * dtype_size(dtype));
    for (std::uint64_t i = 0; i < count; i += chunk) {
      const std::size_t k = static_cast<std::size_t>(std::min<std::uint64_t>(chunk, count - i));
      from_float(dtype, v + i, k, buf.data());
      write(name, buf.data(), k * dtype_size(dtype), i * dtype_size(dtype));
    }
  }

  // Checks every declared byte was written, syncs and renames into place.
  void commit() {
    for (const auto& s : slots_)
      ::loftq::detail::require(s.second.written == s.second.bytes, Errc::invalid_argument,
                               path_ + ": tensor '" + s.first + "' was not completely written");
    file_->commit();
  }

  const std::string& path() const { return path_; }

 private:
  std::string path_;
  std::unique_ptr<detail::AtomicFile> file_;
  std::uint64_t data_offset_ = 0;
  std::map<std::string, detail::Slot> slots_;
};

}  // namespace io
}  // namespace loftq
