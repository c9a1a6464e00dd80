#pragma once
// GGUF and ggml block layouts written out from the published descriptions
// (ggml docs/gguf.md, ggml-common.h, ggml-quants.c dequantize_row_*), for
// the tests only: a small writer, a small trusting parser and the decoders
// of F32, F16, BF16, Q4_0, Q8_0, IQ4_NL and the K formats (Q2_K..Q6_K, IQ4_XS). Nothing here calls the library,
// so the library's reader, writer and encoders are checked against an
// independent reading of the formats.

#include <cmath>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <iterator>
#include <stdexcept>
#include <string>
#include <vector>

namespace gguf_layout {

enum : std::uint32_t {
  F32 = 0,
  F16 = 1,
  Q4_0 = 2,
  Q5_0 = 6,  // sizes only (llama.cpp's fallbacks in a mix): no decoder here
  Q5_1 = 7,
  Q8_0 = 8,
  Q2_K = 10,
  Q3_K = 11,
  Q4_K = 12,
  Q5_K = 13,
  Q6_K = 14,
  IQ4_NL = 20,
  IQ4_XS = 23,
  I32 = 26,
  BF16 = 30
};
enum : std::uint32_t {
  T_U8 = 0,
  T_I8 = 1,
  T_U16 = 2,
  T_I16 = 3,
  T_U32 = 4,
  T_I32 = 5,
  T_F32 = 6,
  T_BOOL = 7,
  T_STRING = 8,
  T_ARRAY = 9,
  T_U64 = 10,
  T_I64 = 11,
  T_F64 = 12
};

inline float f16(std::uint16_t h) {
  const int e = (h >> 10) & 31, m = h & 1023;
  float v = e == 0    ? std::ldexp(static_cast<float>(m), -24)
            : e == 31 ? (m ? NAN : INFINITY)
                      : std::ldexp(static_cast<float>(1024 + m), e - 25);
  return (h & 0x8000) ? -v : v;
}
inline float bf16(std::uint16_t b) {
  const std::uint32_t u = static_cast<std::uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline std::uint64_t le(const unsigned char* p, int n) {
  std::uint64_t v = 0;
  for (int i = 0; i < n; ++i) v |= static_cast<std::uint64_t>(p[i]) << (8 * i);
  return v;
}

// ggml's IQ4_NL levels (ggml-common.h kvalues_iq4nl).
inline const std::int8_t* iq4nl_levels() {
  static const std::int8_t v[16] = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113};
  return v;
}

// Bytes per block and elements per block.
inline void block_of(std::uint32_t type, std::uint64_t& elems, std::uint64_t& bytes) {
  switch (type) {
    case F32:
      elems = 1;
      bytes = 4;
      return;
    case F16:
    case BF16:
      elems = 1;
      bytes = 2;
      return;
    case I32:
      elems = 1;
      bytes = 4;
      return;
    case Q4_0:
    case IQ4_NL:
      elems = 32;
      bytes = 18;
      return;
    case Q5_0:
      elems = 32;
      bytes = 22;
      return;
    case Q5_1:
      elems = 32;
      bytes = 24;
      return;
    case Q8_0:
      elems = 32;
      bytes = 34;
      return;
    case Q2_K:
      elems = 256;
      bytes = 84;
      return;
    case Q3_K:
      elems = 256;
      bytes = 110;
      return;
    case Q4_K:
      elems = 256;
      bytes = 144;
      return;
    case Q5_K:
      elems = 256;
      bytes = 176;
      return;
    case Q6_K:
      elems = 256;
      bytes = 210;
      return;
    case IQ4_XS:
      elems = 256;
      bytes = 136;
      return;
    default:
      throw std::runtime_error("gguf_layout: type " + std::to_string(type));
  }
}

// A float product rounded before it is used: C without FP contraction,
// whatever -ffp-contract this test is built with.
inline float rounded(float v) {
  volatile float r = v;
  return r;
}

// dequantize_row_q2_K ... dequantize_row_q6_K and dequantize_row_iq4_xs on one
// super-block of 256 (block structs of ggml-common.h, QK_K = 256).
inline void decode_k(std::uint32_t type, const unsigned char* x, float* y) {
  const auto h = [&](int off) { return f16(static_cast<std::uint16_t>(le(x + off, 2))); };
  switch (type) {
    case Q2_K: {  // scales[16], qs[64], d, dmin
      const float d = h(80), min = h(82);
      const unsigned char* q = x + 16;
      int is = 0;
      for (int n = 0; n < 256; n += 128, q += 32)
        for (int shift = 0; shift < 8; shift += 2)
          for (int half = 0; half < 2; ++half) {
            const unsigned char sc = x[is++];
            const float dl = d * static_cast<float>(sc & 0xF), ml = rounded(min * static_cast<float>(sc >> 4));
            for (int l = 0; l < 16; ++l) *y++ = rounded(dl * static_cast<float>((q[l + 16 * half] >> shift) & 3)) - ml;
          }
      return;
    }
    case Q3_K: {  // hmask[32], qs[64], scales[12], d
      const float d_all = h(108);
      const unsigned char* sc = x + 96;
      int scales[16];
      for (int j = 0; j < 16; ++j) {
        const int lo = j < 8 ? sc[j] & 0xF : sc[j - 8] >> 4;
        scales[j] = (lo | (((sc[8 + j % 4] >> (2 * (j / 4))) & 3) << 4)) - 32;
      }
      const unsigned char* q = x + 32;
      int is = 0;
      unsigned m = 1;
      for (int n = 0; n < 256; n += 128, q += 32)
        for (int shift = 0; shift < 8; shift += 2, m <<= 1)
          for (int half = 0; half < 2; ++half) {
            const float dl = d_all * static_cast<float>(scales[is++]);
            for (int l = 0; l < 16; ++l) {
              const int k = l + 16 * half;
              *y++ = dl * static_cast<float>(((q[k] >> shift) & 3) - ((x[k] & m) ? 0 : 4));
            }
          }
      return;
    }
    case Q4_K:
    case Q5_K: {  // d, dmin, scales[12], (Q5_K: qh[32]), qs[128]
      const float d = h(0), min = h(2);
      const unsigned char* s = x + 4;
      const unsigned char* qh = x + 16;
      const unsigned char* ql = x + (type == Q5_K ? 48 : 16);
      auto get = [&](int j, int& sc, int& mm) {  // get_scale_min_k4
        if (j < 4) {
          sc = s[j] & 63;
          mm = s[j + 4] & 63;
        } else {
          sc = (s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4);
          mm = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
        }
      };
      unsigned u1 = 1, u2 = 2;
      for (int j = 0, is = 0; j < 256; j += 64, is += 2, ql += 32, u1 <<= 2, u2 <<= 2) {
        int sc, mm;
        get(is, sc, mm);
        const float d1 = d * static_cast<float>(sc), m1 = rounded(min * static_cast<float>(mm));
        get(is + 1, sc, mm);
        const float d2 = d * static_cast<float>(sc), m2 = rounded(min * static_cast<float>(mm));
        for (int l = 0; l < 32; ++l) {
          const int hi = type == Q5_K && (qh[l] & u1) ? 16 : 0;
          *y++ = rounded(d1 * static_cast<float>((ql[l] & 0xF) + hi)) - m1;
        }
        for (int l = 0; l < 32; ++l) {
          const int hi = type == Q5_K && (qh[l] & u2) ? 16 : 0;
          *y++ = rounded(d2 * static_cast<float>((ql[l] >> 4) + hi)) - m2;
        }
      }
      return;
    }
    case Q6_K: {  // ql[128], qh[64], scales[16] (int8), d
      const float d = h(208);
      const unsigned char* ql = x;
      const unsigned char* qh = x + 128;
      const signed char* sc = reinterpret_cast<const signed char*>(x + 192);
      for (int n = 0; n < 256; n += 128, ql += 64, qh += 32, sc += 8, y += 128)
        for (int l = 0; l < 32; ++l) {
          const int is = l / 16;
          const int q1 = ((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
          const int q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
          const int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
          const int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
          y[l] = d * static_cast<float>(sc[is]) * static_cast<float>(q1);
          y[l + 32] = d * static_cast<float>(sc[is + 2]) * static_cast<float>(q2);
          y[l + 64] = d * static_cast<float>(sc[is + 4]) * static_cast<float>(q3);
          y[l + 96] = d * static_cast<float>(sc[is + 6]) * static_cast<float>(q4);
        }
      return;
    }
    case IQ4_XS: {  // d, scales_h, scales_l[4], qs[128]
      const float d = h(0);
      const int scales_h = static_cast<int>(le(x + 2, 2));
      const unsigned char* qs = x + 8;
      for (int ib = 0; ib < 8; ++ib, y += 32, qs += 16) {
        const int ls = ((x[4 + ib / 2] >> 4 * (ib % 2)) & 0xf) | (((scales_h >> 2 * ib) & 3) << 4);
        const float dl = d * static_cast<float>(ls - 32);
        for (int j = 0; j < 16; ++j) {
          y[j] = dl * static_cast<float>(iq4nl_levels()[qs[j] & 0xf]);
          y[j + 16] = dl * static_cast<float>(iq4nl_levels()[qs[j] >> 4]);
        }
      }
      return;
    }
    default:
      throw std::runtime_error("gguf_layout: not a K type " + std::to_string(type));
  }
}

// dequantize_row_* of ggml: n elements (a multiple of the block) -> float.
inline std::vector<float> decode(std::uint32_t type, const unsigned char* p, std::uint64_t n) {
  std::vector<float> y(n);
  switch (type) {
    case Q2_K:
    case Q3_K:
    case Q4_K:
    case Q5_K:
    case Q6_K:
    case IQ4_XS: {
      std::uint64_t elems, bytes;
      block_of(type, elems, bytes);
      for (std::uint64_t b = 0; b < n / 256; ++b) decode_k(type, p + b * bytes, y.data() + 256 * b);
      break;
    }
    case F32:
      std::memcpy(y.data(), p, n * 4);
      break;
    case F16:
      for (std::uint64_t i = 0; i < n; ++i) y[i] = f16(static_cast<std::uint16_t>(le(p + 2 * i, 2)));
      break;
    case BF16:
      for (std::uint64_t i = 0; i < n; ++i) y[i] = bf16(static_cast<std::uint16_t>(le(p + 2 * i, 2)));
      break;
    case Q4_0:
    case IQ4_NL:
      for (std::uint64_t b = 0; b < n / 32; ++b) {
        const unsigned char* q = p + 18 * b;
        const float d = f16(static_cast<std::uint16_t>(le(q, 2)));
        for (int j = 0; j < 16; ++j) {
          const int lo = q[2 + j] & 0x0f, hi = q[2 + j] >> 4;
          if (type == Q4_0) {
            y[32 * b + j] = static_cast<float>(lo - 8) * d;
            y[32 * b + j + 16] = static_cast<float>(hi - 8) * d;
          } else {
            y[32 * b + j] = d * static_cast<float>(iq4nl_levels()[lo]);
            y[32 * b + j + 16] = d * static_cast<float>(iq4nl_levels()[hi]);
          }
        }
      }
      break;
    case Q8_0:
      for (std::uint64_t b = 0; b < n / 32; ++b) {
        const unsigned char* q = p + 34 * b;
        const float d = f16(static_cast<std::uint16_t>(le(q, 2)));
        for (int j = 0; j < 32; ++j) y[32 * b + j] = static_cast<float>(static_cast<std::int8_t>(q[2 + j])) * d;
      }
      break;
    default:
      throw std::runtime_error("gguf_layout: cannot decode type " + std::to_string(type));
  }
  return y;
}

struct Tensor {
  std::string name;
  std::vector<std::uint64_t> ne;
  std::uint32_t type = 0;
  std::uint64_t offset = 0, nbytes = 0, numel = 1;
};

// A parsed file (trusted: the test's own or the tool's output).
struct File {
  std::vector<unsigned char> bytes;
  std::uint64_t kv_begin = 24, kv_end = 0, data = 0, alignment = 32;
  std::vector<Tensor> tensors;
  std::vector<std::pair<std::string, std::pair<std::uint32_t, std::vector<unsigned char>>>> kvs;  // key, type, value

  explicit File(const std::string& path) {
    std::ifstream f(path, std::ios::binary);
    if (!f) throw std::runtime_error(path + ": cannot open");
    bytes.assign(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
    if (bytes.size() < 24 || std::memcmp(bytes.data(), "GGUF", 4) != 0 || le(&bytes[4], 4) != 3)
      throw std::runtime_error(path + ": not GGUF v3");
    const std::uint64_t nt = le(&bytes[8], 8), nkv = le(&bytes[16], 8);
    std::uint64_t pos = 24;
    auto u = [&](int n) {
      if (pos + n > bytes.size()) throw std::runtime_error("gguf_layout: truncated");
      const std::uint64_t v = le(&bytes[pos], n);
      pos += n;
      return v;
    };
    auto str = [&] {
      const std::uint64_t n = u(8);
      if (n > bytes.size() - pos) throw std::runtime_error("gguf_layout: truncated string");
      std::string s(reinterpret_cast<const char*>(&bytes[pos]), n);
      pos += n;
      return s;
    };
    auto scalar = [](std::uint32_t t) -> int {
      switch (t) {
        case T_U8:
        case T_I8:
        case T_BOOL:
          return 1;
        case T_U16:
        case T_I16:
          return 2;
        case T_U32:
        case T_I32:
        case T_F32:
          return 4;
        case T_U64:
        case T_I64:
        case T_F64:
          return 8;
        default:
          return 0;
      }
    };
    for (std::uint64_t i = 0; i < nkv; ++i) {
      const std::string key = str();
      const std::uint32_t t = static_cast<std::uint32_t>(u(4));
      const std::uint64_t v0 = pos;
      if (t == T_STRING) {
        str();
      } else if (t == T_ARRAY) {
        const std::uint32_t et = static_cast<std::uint32_t>(u(4));
        const std::uint64_t n = u(8);
        for (std::uint64_t k = 0; k < n; ++k)
          if (et == T_STRING)
            str();
          else
            u(scalar(et));
      } else {
        const std::uint64_t v = u(scalar(t));
        if (key == "general.alignment") alignment = v;
      }
      kvs.push_back({key, {t, std::vector<unsigned char>(bytes.begin() + v0, bytes.begin() + pos)}});
    }
    kv_end = pos;
    for (std::uint64_t i = 0; i < nt; ++i) {
      Tensor t;
      t.name = str();
      const std::uint64_t nd = u(4);
      for (std::uint64_t d = 0; d < nd; ++d) {
        t.ne.push_back(u(8));
        t.numel *= t.ne.back();
      }
      t.type = static_cast<std::uint32_t>(u(4));
      t.offset = u(8);
      std::uint64_t be, bb;
      block_of(t.type, be, bb);
      t.nbytes = t.numel / be * bb;
      tensors.push_back(t);
    }
    data = (pos + alignment - 1) / alignment * alignment;
    for (const Tensor& t : tensors)
      if (data + t.offset + t.nbytes > bytes.size()) throw std::runtime_error(path + ": tensor past the end");
  }
  const Tensor* find(const std::string& name) const {
    for (const Tensor& t : tensors)
      if (t.name == name) return &t;
    return nullptr;
  }
  const unsigned char* at(const Tensor& t) const { return bytes.data() + data + t.offset; }
  std::vector<float> values(const Tensor& t) const { return decode(t.type, at(t), t.numel); }
  const std::vector<unsigned char>* kv(const std::string& key) const {
    for (const auto& e : kvs)
      if (e.first == key) return &e.second.second;
    return nullptr;
  }
  std::string kv_string(const std::string& key) const {
    const auto* v = kv(key);
    return v && v->size() >= 8 ? std::string(v->begin() + 8, v->end()) : std::string();
  }
};

// A GGUF file assembled by hand: add key-value pairs and tensors, then bytes().
struct Builder {
  std::vector<unsigned char> kv;
  std::uint64_t n_kv = 0, alignment = 32;
  struct T {
    std::string name;
    std::vector<std::uint64_t> ne;
    std::uint32_t type;
    std::vector<unsigned char> data;
  };
  std::vector<T> tensors;

  static void put(std::vector<unsigned char>& o, std::uint64_t v, int n) {
    for (int i = 0; i < n; ++i) o.push_back(static_cast<unsigned char>(v >> (8 * i)));
  }
  static void put_str(std::vector<unsigned char>& o, const std::string& s) {
    put(o, s.size(), 8);
    o.insert(o.end(), s.begin(), s.end());
  }
  void key(const std::string& k, std::uint32_t type) {
    put_str(kv, k);
    put(kv, type, 4);
    ++n_kv;
  }
  void add_string(const std::string& k, const std::string& v) {
    key(k, T_STRING);
    put_str(kv, v);
  }
  void add_u32(const std::string& k, std::uint32_t v) {
    key(k, T_U32);
    put(kv, v, 4);
    if (k == "general.alignment") alignment = v;
  }
  void add_f32(const std::string& k, float v) {
    std::uint32_t b;
    std::memcpy(&b, &v, 4);
    key(k, T_F32);
    put(kv, b, 4);
  }
  void add_string_array(const std::string& k, const std::vector<std::string>& v) {
    key(k, T_ARRAY);
    put(kv, T_STRING, 4);
    put(kv, v.size(), 8);
    for (const auto& s : v) put_str(kv, s);
  }
  void add_tensor(const std::string& name, std::vector<std::uint64_t> ne, std::uint32_t type,
                  std::vector<unsigned char> data) {
    tensors.push_back({name, std::move(ne), type, std::move(data)});
  }
  // Floats stored as F32, F16 (round to nearest even via the float's bits) or BF16.
  static std::vector<unsigned char> encode_floats(const std::vector<float>& v, std::uint32_t type) {
    std::vector<unsigned char> o;
    for (float f : v) {
      std::uint32_t u;
      std::memcpy(&u, &f, 4);
      if (type == F32) {
        put(o, u, 4);
      } else if (type == BF16) {
        put(o, (u + 0x7fffu + ((u >> 16) & 1u)) >> 16, 2);
      } else {  // F16, normal range only (the test data stays there)
        const std::uint32_t sign = (u >> 16) & 0x8000u;
        const int e = static_cast<int>((u >> 23) & 0xff) - 127 + 15;
        std::uint32_t m = u & 0x7fffffu;
        std::uint32_t h;
        if (e <= 0) {
          h = sign;  // the test data has no values below 2^-14
        } else {
          h = (static_cast<std::uint32_t>(e) << 10) | (m >> 13);
          const std::uint32_t rest = m & 0x1fffu;
          if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) ++h;
          h |= sign;
        }
        put(o, h, 2);
      }
    }
    return o;
  }
  std::vector<unsigned char> bytes() const {
    std::vector<unsigned char> o = {'G', 'G', 'U', 'F'};
    put(o, 3, 4);
    put(o, tensors.size(), 8);
    put(o, n_kv, 8);
    o.insert(o.end(), kv.begin(), kv.end());
    std::uint64_t off = 0;
    for (const T& t : tensors) {
      put_str(o, t.name);
      put(o, t.ne.size(), 4);
      for (auto e : t.ne) put(o, e, 8);
      put(o, t.type, 4);
      put(o, off, 8);
      off = (off + t.data.size() + alignment - 1) / alignment * alignment;
    }
    o.resize((o.size() + alignment - 1) / alignment * alignment, 0);
    for (const T& t : tensors) {
      o.insert(o.end(), t.data.begin(), t.data.end());
      o.resize((o.size() + alignment - 1) / alignment * alignment, 0);
    }
    return o;
  }
  void write(const std::string& path) const {
    const std::vector<unsigned char> b = bytes();
    std::ofstream f(path, std::ios::binary);
    f.write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(b.size()));
    if (!f) throw std::runtime_error(path + ": cannot write");
  }
};

}  // namespace gguf_layout
