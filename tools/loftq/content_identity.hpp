#pragma once
// A file's identity by content: its size and a 64-bit FNV-1a hash of its
// bytes, "SIZE:fnv1a64:HEX". The report records it for the calibration
// statistics a model was computed with and for every file a shard wrote, so
// that merge refuses other statistics and shards changed after their run.

#include <string>

namespace loftq_cli {

// Throws loftq::Error (io_error) naming the path when it cannot be read.
std::string content_identity(const std::string& path);

}  // namespace loftq_cli
