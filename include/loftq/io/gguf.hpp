#pragma once
// Reading and writing GGUF files (version 3; ggml's docs/gguf.md and
// gguf.cpp), and ggml's block bytes of a PackedMatrix in a ggml format.
//
// Layout, little endian: "GGUF", u32 version, u64 tensor count, u64 key-value
// count; the key-value pairs (string key, u32 value type, value); the tensor
// infos (string name, u32 n_dims, u64 ne[n_dims], u32 ggml type, u64 offset);
// padding to general.alignment (u32, a power of two; default 32); the data
// section. A string is a u64 length and that many bytes. ne[0] is the
// fastest-varying dimension, so a PyTorch (out, in) weight has ne = [in, out].
// Offsets are relative to the data section; as ggml requires, tensor i starts
// where tensor i-1 ends, padded to the alignment.
//
// GgufFile faces untrusted bytes like SafetensorsFile: the header is read
// with pread a bounded chunk at a time and validated before any tensor is
// touched; counts and lengths are checked against the bytes the file still
// holds before anything is allocated for them, all size arithmetic is
// overflow-checked, and every defect is a loftq::Error naming the file:
// bad magic or version, truncation, unknown value or tensor types, nested
// arrays, booleans other than 0/1, empty or duplicate keys and tensor names,
// names over 63 bytes (ggml's limit), n_dims outside 1..4, zero or
// overflowing dimensions, rows that are not whole blocks, a bad alignment,
// offsets that are misaligned, out of order or outside the file, and more
// pairs, tensors or header bytes than kGgufMaxKVs, kGgufMaxTensors and
// kGgufMaxHeaderBytes allow.
//
// GgufWriter declares every key-value pair and tensor first, writes the
// header, then takes tensor bytes in any order and in pieces (pwrite at
// known offsets); commit() renames it into place (detail/posix_file.hpp).
//
// The parts: gguf_types.hpp (values, pairs, tensor infos), ggml_types.hpp
// (ggml types and block bytes), ggml_dequantize.hpp (blocks back to floats),
// gguf_reader.hpp, gguf_writer.hpp.

#include "loftq/io/ggml_dequantize.hpp"
#include "loftq/io/ggml_types.hpp"
#include "loftq/io/gguf_reader.hpp"
#include "loftq/io/gguf_types.hpp"
#include "loftq/io/gguf_writer.hpp"
