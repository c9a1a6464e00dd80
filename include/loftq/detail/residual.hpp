#pragma once
// Sweeps over an m x n row-major residual R against a low-rank product
// P = A B^T, formed a row chunk at a time so that it stays in cache next to
// the rows of R (and W) it meets. The LoftQ loop's memory traffic is in
// these passes, so each does as much as it can per read of R:
//   residual_error        err(R, P) summed over chunks; R unchanged
//   requantize_residual   the same, then R := W - q(W - P) in the same pass
// plus quantization_squared_error, QLoRA's ||x - q(x)||^2 without an output.

#include <Eigen/Core>
#include <algorithm>
#include <cstdint>
#include <numeric>
#include <type_traits>
#include <vector>

#include "../packed.hpp"
#include "block_quantizer.hpp"
#include "gemm.hpp"
#include "instances.hpp"
#include "parallel.hpp"
#include "reduce.hpp"

namespace loftq {
namespace detail {

// Rows per chunk of the residual sweeps: about 64K elements, so a chunk of
// P = A B^T stays in cache next to the rows of W and R it meets.
inline Eigen::Index residual_rows(Eigen::Index n) {
  return std::max<Eigen::Index>(1, std::min<Eigen::Index>(kRowChunk, (1 << 16) / n + 1));
}

// Whether Eigen itself was compiled for AVX or wider in this translation
// unit. Its GEMM then forms A B^T (depth r, a wide output) at least as fast
// as the skinny kernel (with AVX-512 faster: 4096^2 initialize took 0.187 s
// against 0.215 s, bench/dispatch_consumer.sh), so the kernel is used only
// where Eigen is left at SSE2 or NEON-less defaults, e.g. a build without
// architecture flags. The only flag-dependent choice in the kernels: both
// ways are correct on any CPU that can run the unit.
constexpr bool eigen_has_wide_gemm() {
#if defined(EIGEN_VECTORIZE_AVX)
  return true;
#else
  return false;
#endif
}

// Column-major float factors, the operands skinny_gemm takes for A B^T.
template <class Scalar, class MatA, class MatB>
constexpr bool low_rank_operands() {
  auto plain = [](auto* m) {
    using M = std::remove_pointer_t<decltype(m)>;
    return std::is_same<typename M::Scalar, float>::value && !(M::Flags & Eigen::RowMajorBit) &&
           (M::Flags & Eigen::DirectAccessBit) && M::InnerStrideAtCompileTime == 1;
  };
  return std::is_same<Scalar, float>::value && plain(static_cast<MatA*>(nullptr)) && plain(static_cast<MatB*>(nullptr));
}

// One pass over fixed row chunks of an m x n row-major matrix with P = A B^T
// formed a chunk at a time: returns the sum, in chunk order, of
// per_chunk(r0, len, P chunk). Both sweeps below are this loop.
template <class Scalar, class MatA, class MatB, class F>
double residual_sweep(Eigen::Index m, Eigen::Index n, const MatA& A, const MatB& B, int threads, F&& per_chunk) {
  const Eigen::Index rows = residual_rows(n);
  const std::int64_t chunks = (m + rows - 1) / rows;
  return chunked_sum(chunks, threads, [&](std::int64_t c) {
    const Eigen::Index r0 = c * rows, len = std::min(rows, m - r0);
    Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> P(len, n);
    if constexpr (low_rank_operands<Scalar, MatA, MatB>() && !eigen_has_wide_gemm()) {
      if (skinny_kernels()) {
        // P = A_rows B^T through the skinny kernel: depth r, B^T read
        // row-major straight out of column-major B.
        skinny_gemm(A.data() + r0, 1, A.outerStride(), B.data(), B.outerStride(), A.cols(), len, n, P.data(), n);
        return per_chunk(r0, len, static_cast<const Scalar*>(P.data()));
      }
    }
    P.noalias() = A.middleRows(r0, len) * B.transpose();
    return per_chunk(r0, len, static_cast<const Scalar*>(P.data()));
  });
}

// The error terms of a chunk, given R and P over `rows` rows of n: the plain
// ||R - P||^2, and none (for a sweep whose R holds nothing yet).
struct PlainError {
  template <class Scalar>
  double operator()(const Scalar* R, const Scalar* P, Eigen::Index rows, Eigen::Index n) const {
    return squared_distance(R, P, static_cast<std::int64_t>(rows) * n);
  }
};
struct NoError {
  template <class Scalar>
  double operator()(const Scalar*, const Scalar*, Eigen::Index, Eigen::Index) const {
    return 0.0;
  }
};

// err(R - A B^T) over R's chunks (by default ||R - A B^T||^2), R unchanged.
template <class Scalar, class MatA, class MatB, class Err = PlainError>
double residual_error(const Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>& R, const MatA& A,
                      const MatB& B, int threads, const Err& err = Err{}) {
  const Eigen::Index n = R.cols();
  return residual_sweep<Scalar>(R.rows(), n, A, B, threads, [&](Eigen::Index r0, Eigen::Index len, const Scalar* Pc) {
    return err(R.data() + r0 * n, Pc, len, n);
  });
}

// Where a requantizing sweep puts the codes of the next Q, and how it
// quantizes. codes must be zeroed by the caller (the packers OR bits in).
struct Requantize {
  PackedMatrix* codes;
  const QuantSpec* spec;
};

// err(R - P) summed as residual_error does, with P = A B^T, then
// R := W - q(W - P) with q's codes in *next.codes: LoftQ's next residual.
// Quantizing each chunk while it is still in cache saves a full read and
// write of W and R per iteration. A chunk can only be quantized alone when
// its element range starts on a block and byte boundary; otherwise the
// quantization runs as its own pass after the sweep. Each block's result
// depends only on its own input, so the output is bit-identical either way.
template <class Scalar, class MatA, class MatB, class Err = PlainError>
double requantize_residual(const Scalar* Wp, Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>& R,
                           const MatA& A, const MatB& B, int threads, const Requantize& next, const Err& err = Err{}) {
  const Eigen::Index m = R.rows(), n = R.cols(), rows = residual_rows(n);
  const std::int64_t N = static_cast<std::int64_t>(m) * n;
  const QuantSpec& spec = *next.spec;
  const bool fused = (static_cast<std::int64_t>(rows) * n) % std::lcm<std::int64_t>(spec.block_size, 8) == 0;
  auto sweep = [&](auto&& quantize_chunk) {
    return residual_sweep<Scalar>(m, n, A, B, threads, [&](Eigen::Index r0, Eigen::Index len, const Scalar* Pc) {
      Scalar* Rc = R.data() + r0 * n;
      const Scalar* Wc = Wp + r0 * n;
      const double s = err(static_cast<const Scalar*>(Rc), Pc, len, n);
      for (Eigen::Index i = 0; i < len * n; ++i) Rc[i] = Wc[i] - Pc[i];
      quantize_chunk(static_cast<std::int64_t>(r0) * n, static_cast<std::int64_t>(r0 + len) * n);
      return s;
    });
  };
  if (!fused) {
    const double s = sweep([](std::int64_t, std::int64_t) {});
    quantize_flat(R.data(), R.data(), next.codes, N, spec, threads, Wp);
    return s;
  }
  return with_block_quantizer<Scalar>(spec, [&](const auto& bq) {
    const std::int64_t bs = spec.block_size;
    return sweep([&](std::int64_t e0, std::int64_t e1) {
      bq.run(R.data(), R.data(), next.codes, N, e0 / bs, (e1 + bs - 1) / bs, Wp);
    });
  });
}

// ||x - q(x)||^2 in double, written only to a per-chunk buffer that stays in
// cache: QLoRA's baseline error in one read-only pass over x. Chunks hold
// whole blocks, so each block is quantized exactly as quantize_flat would;
// for block sizes dividing 2^16 the sum is squared_norm's, bit for bit.
// Plain specs only (no column weights or warm fractions, which are indexed
// by global position).
template <class Scalar>
double quantization_squared_error(const Scalar* x, std::int64_t N, const QuantSpec& s, int threads) {
  require(!s.col_weights && !s.fractions, Errc::invalid_argument,
          "quantization_squared_error: column weights and warm fractions are not supported");
  return with_block_quantizer<Scalar>(s, [&](const auto& bq) {
    const std::int64_t bs = s.block_size, span = std::max<std::int64_t>(1, (1 << 16) / bs) * bs;
    return chunked_sum((N + span - 1) / span, threads, [&](std::int64_t c) {
      const std::int64_t e0 = c * span, len = std::min(span, N - e0);
      std::vector<Scalar> d(static_cast<std::size_t>(len));  // x - q(x) for this chunk
      bq.run(x + e0, d.data(), nullptr, len, 0, (len + bs - 1) / bs, x + e0);
      return interleaved_sum(len, [&](std::int64_t i) {
        const double v = static_cast<double>(d[static_cast<std::size_t>(i)]);
        return v * v;
      });
    });
  });
}

}  // namespace detail
}  // namespace loftq

#ifdef LOFTQ_INSTANCES
namespace loftq {
namespace detail {
LOFTQ_INSTANCE_FLOAT double quantization_squared_error<float>(const float*, std::int64_t, const QuantSpec&, int);
LOFTQ_INSTANCE_DOUBLE double quantization_squared_error<double>(const double*, std::int64_t, const QuantSpec&, int);
}  // namespace detail
}  // namespace loftq
#endif
