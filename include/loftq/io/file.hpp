#pragma once
// Plain file access as loftq's readers and writers do it, for programs built
// on the library: a read-only file read by pread with its identity checked on
// every read, and the flag that stops the library's long writes.

#include <atomic>

#include "detail/posix_file.hpp"

namespace loftq {
namespace io {

// open(path), size(), pread_exact(buf, offset, n); throws loftq::Error naming
// the path (Errc::io_error) on any failure, or when the file changed since open.
using ReadOnlyFile = detail::ReadOnlyFile;

// "PID-" plus 16 random hex digits, for naming temporary files and
// directories beside an output (create them with O_EXCL or mkdir, and retry
// on EEXIST).
using detail::unique_tag;

// The library's file writers check *flag between pieces of a large write and
// of its final sync, and give up with Errc::cancelled once it is true (a
// signal handler's flag, like Options::cancel). Null, the default: never.
inline void set_write_cancel_flag(const std::atomic<bool>* flag) { detail::io_cancel_flag().store(flag); }

}  // namespace io
}  // namespace loftq
