#pragma once
// Block-wise quantizers: NormalFloat<Bits> (QLoRA's NF-k, absmax scales) and
// Uniform<Bits> (symmetric absmax or asymmetric min/max grids), plus a
// runtime-configured Quantizer for tools that choose the format from flags.
//
// Every quantizer exposes the same small interface, which the free functions
// quantize / dequantize / fake_quantize and loftq::initialize rely on:
//   q.bits                 bit width (static constexpr or data member)
//   q.block_size           elements per block of the row-major flattening
//   q.scale_mode()         ScaleMode::absmax, ScaleMode::minmax, or ScaleMode::affine
//                          (scale * level - minimum: ggml's K formats with minimums)
//   q.codebook()           the sorted normalized levels
//   q.ggml_format()        (optional) a ggml block format whose kernel chooses
//                          the scales, minimums and codes (ggml_quantizer.hpp)

#include <Eigen/Core>
#include <string>
#include <type_traits>
#include <vector>

#include "codebook.hpp"
#include "detail/block_quantizer.hpp"
#include "detail/matrix_view.hpp"
#include "error.hpp"
#include "packed.hpp"

namespace loftq {

template <class Scalar>
using RowMatrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

template <int Bits>
struct NormalFloat {
  static_assert(Bits >= 2 && Bits <= 8, "NormalFloat supports 2..8 bits");
  static constexpr int bits = Bits;
  Eigen::Index block_size = 64;

  NormalFloat() = default;
  explicit NormalFloat(Eigen::Index block) : block_size(block) {}
  ScaleMode scale_mode() const { return ScaleMode::absmax; }
  const std::vector<float>& codebook() const { return normal_float_codebook(Bits); }
  std::string name() const { return "nf" + std::to_string(Bits); }
};

template <int Bits>
struct Uniform {
  static_assert(Bits >= 2 && Bits <= 8, "Uniform supports 2..8 bits");
  static constexpr int bits = Bits;
  Eigen::Index block_size = 64;
  bool symmetric = true;  // absmax grid linspace(-1, 1, 2^Bits); false: per-block [min, max]

  Uniform() = default;
  explicit Uniform(Eigen::Index block, bool sym = true) : block_size(block), symmetric(sym) {}
  ScaleMode scale_mode() const { return symmetric ? ScaleMode::absmax : ScaleMode::minmax; }
  const std::vector<float>& codebook() const { return uniform_codebook(Bits, symmetric); }
  std::string name() const { return (symmetric ? "uniform" : "uniform_asym") + std::to_string(Bits); }
};

// The same quantizers with the kind and bit width chosen at run time.
struct Quantizer {
  enum class Kind { normal_float, uniform };
  Kind kind = Kind::normal_float;
  int bits = 4;
  Eigen::Index block_size = 64;
  bool symmetric = true;  // uniform only

  Quantizer() = default;
  Quantizer(Kind k, int b, Eigen::Index block = 64, bool sym = true)
      : kind(k), bits(b), block_size(block), symmetric(sym) {
    codebook();  // validates bits now rather than at first use
  }
  ScaleMode scale_mode() const { return kind == Kind::uniform && !symmetric ? ScaleMode::minmax : ScaleMode::absmax; }
  const std::vector<float>& codebook() const {
    return kind == Kind::normal_float ? normal_float_codebook(bits) : uniform_codebook(bits, symmetric);
  }
  std::string name() const {
    return (kind == Kind::normal_float ? std::string("nf") : std::string(symmetric ? "uniform" : "uniform_asym")) +
           std::to_string(bits);
  }
};

struct QuantizeOptions {
  // Per-block squared-error-optimal scale (<= absmax) instead of absmax, for
  // absmax codebooks whose extremes are -1 and +1 (NF, symmetric uniform);
  // ignored for min/max scaling. The stored format does not change.
  bool scale_search = false;
  int threads = 0;  // 0: OpenMP's default; results do not depend on it
};

// Codes and fp32 block scales of W (row-major flattening, any W layout).
template <class Q, class Derived>
PackedMatrix quantize(const Eigen::MatrixBase<Derived>& W, const Q& q, const QuantizeOptions& opt) {
  detail::RowMajorView<Derived> v(W);
  detail::check_weights(W, v.data(), opt.threads, "quantize", false);
  detail::QuantSpec s = detail::spec_of(q);
  s.search = opt.scale_search;
  PackedMatrix P = detail::make_packed(W.rows(), W.cols(), s);
  detail::quantize_flat(v.data(), static_cast<typename Derived::Scalar*>(nullptr), &P, W.size(), s, opt.threads);
  return P;
}

template <class Q, class Derived>
PackedMatrix quantize(const Eigen::MatrixBase<Derived>& W, const Q& q, int threads = 0) {
  QuantizeOptions opt;
  opt.threads = threads;
  return quantize(W, q, opt);
}

// The matrix a PackedMatrix stands for, row-major like its flattening; the
// overload with an output reuses its storage (resized if needed).
template <class Scalar>
void dequantize(const PackedMatrix& P, RowMatrix<Scalar>& out, int threads = 0) {
  detail::validate(P);
  detail::resize_large(out, P.rows, P.cols);
  detail::dequantize_flat(P, out.data(), threads);
}

template <class Scalar = float>
RowMatrix<Scalar> dequantize(const PackedMatrix& P, int threads = 0) {
  RowMatrix<Scalar> out;
  dequantize(P, out, threads);
  return out;
}

// dequantize(quantize(W)) without materializing the codes; bit-identical to
// it. The overload with an output writes into it (resized if needed), so
// repeated calls need not allocate; out may be W itself, but not a part of it.
// If it throws (NaN/Inf in W), out's contents are unspecified unless out is W,
// which is then left untouched.
template <class Q, class Derived, class Scalar>
void fake_quantize(const Eigen::MatrixBase<Derived>& W, const Q& q, RowMatrix<Scalar>& out,
                   const QuantizeOptions& opt = {}) {
  static_assert(std::is_same<Scalar, typename Derived::Scalar>::value, "out must have W's scalar type");
  detail::RowMajorView<Derived> v(W);
  // In place, a NaN found mid-pass would leave W half overwritten: scan first.
  detail::check_weights(W, v.data(), opt.threads, "fake_quantize", out.data() == v.data());
  detail::QuantSpec s = detail::spec_of(q);
  s.search = opt.scale_search;
  detail::resize_large(out, W.rows(), W.cols());
  detail::quantize_flat<Scalar>(v.data(), out.data(), nullptr, W.size(), s, opt.threads);
}

template <class Q, class Derived>
RowMatrix<typename Derived::Scalar> fake_quantize(const Eigen::MatrixBase<Derived>& W, const Q& q,
                                                  const QuantizeOptions& opt) {
  RowMatrix<typename Derived::Scalar> out;
  fake_quantize(W, q, out, opt);
  return out;
}

template <class Q, class Derived>
RowMatrix<typename Derived::Scalar> fake_quantize(const Eigen::MatrixBase<Derived>& W, const Q& q, int threads = 0) {
  QuantizeOptions opt;
  opt.threads = threads;
  return fake_quantize(W, q, opt);
}

}  // namespace loftq
