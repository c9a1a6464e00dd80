#pragma once
// llama2.c's checkpoint format (run.c): a header of 7 int32 (dim, hidden_dim,
// n_layers, n_heads, n_kv_heads, vocab_size (negative: unshared classifier),
// seq_len), then float32 weights in a fixed order. The test tools read
// stories260K with it and take the weights in order.

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <stdexcept>
#include <string>
#include <vector>

struct Llama2c {
  std::uint64_t dim = 0, hidden = 0, heads = 0, kv_heads = 0, vocab = 0, seq = 0;
  int layers = 0;
  std::vector<float> w;
  std::size_t pos = 0;

  std::uint64_t kv_dim() const { return dim * kv_heads / heads; }
  std::uint64_t head() const { return dim / heads; }
  // The next n weights.
  const float* take(std::uint64_t n) {
    if (pos + n > w.size()) throw std::runtime_error("llama2.c checkpoint: file too short");
    const float* p = w.data() + pos;
    pos += n;
    return p;
  }
  void expect_end() const {
    if (pos != w.size()) throw std::runtime_error("llama2.c checkpoint: trailing data");
  }
};

// False when `path` cannot be opened (the caller skips).
inline bool read_llama2c(const std::string& path, Llama2c& m) {
  std::ifstream f(path, std::ios::binary);
  if (!f) return false;
  std::vector<char> bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  if (bytes.size() < 28) throw std::runtime_error(path + ": short file");
  std::int32_t h[7];
  std::memcpy(h, bytes.data(), 28);
  m.dim = static_cast<std::uint64_t>(h[0]);
  m.hidden = static_cast<std::uint64_t>(h[1]);
  m.layers = h[2];
  m.heads = static_cast<std::uint64_t>(h[3]);
  m.kv_heads = static_cast<std::uint64_t>(h[4]);
  m.vocab = static_cast<std::uint64_t>(std::abs(h[5]));
  m.seq = static_cast<std::uint64_t>(h[6]);
  m.w.resize((bytes.size() - 28) / 4);
  std::memcpy(m.w.data(), bytes.data() + 28, m.w.size() * 4);
  m.pos = 0;
  return true;
}
