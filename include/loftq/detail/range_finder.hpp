#pragma once
// The products and the orthonormalization of the randomized range finder
// (TruncatedSVD in svd.hpp): Y = M X and Y = M^T X in fixed chunks, each one
// serial product, so the results do not depend on the thread count.

#include <Eigen/Core>
#include <Eigen/QR>
#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "gemm.hpp"
#include "parallel.hpp"

#include "macro_scope.hpp"

namespace loftq {
namespace detail {

// Operands the skinny kernels take (gemm.hpp); they run when
// skinny_kernels() says a vector kernel is there.
template <class DM>
constexpr bool skinny_operand() {
  return std::is_same<typename DM::Scalar, float>::value && (DM::Flags & Eigen::RowMajorBit) &&
         (DM::Flags & Eigen::DirectAccessBit) && DM::InnerStrideAtCompileTime == 1;
}

// Y = M * X for a row-major float M through the broadcast kernel: X goes
// row-major, padded to whole vectors, and each row chunk of M runs into a
// small row-major block.
template <class DM, class DX, class Out>
void skinny_mul(const DM& M, const DX& X, Out& Y, int threads) {
  using RowF = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  const Eigen::Index m = M.rows(), chunks = (m + kRowChunk - 1) / kRowChunk;
  const Eigen::Index n = M.cols(), k = X.cols(), kp = (k + 7) / 8 * 8;
  RowF Xp = RowF::Zero(n, kp);
  Xp.leftCols(k) = X.template cast<float>();
  parallel_for(chunks, threads, [&](std::int64_t c) {
    const Eigen::Index r0 = c * kRowChunk, len = std::min(kRowChunk, m - r0);
    RowF Yc(len, kp);
    skinny_gemm(M.data() + r0 * M.outerStride(), M.outerStride(), 1, Xp.data(), kp, n, len, kp, Yc.data(), kp);
    Y.middleRows(r0, len) = Yc.leftCols(k);
  });
}

// Y = M^T * X for a row-major float M: the transposed kernel over column
// ranges of M, each range's rows of the (row-major, padded) result small
// enough to stay in L2. Every output element is a chain over all of M's rows
// in order, so the ranges, and with them the thread count, change no bits.
template <class DM, class DX, class Out>
void skinny_mul_t(const DM& M, const DX& X, Out& Y, int threads) {
  using RowF = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  const Eigen::Index m = M.rows(), n = M.cols(), k = X.cols(), kp = (k + 7) / 8 * 8;
  RowF Xp = RowF::Zero(m, kp), Yp(n, kp);
  Xp.leftCols(k) = X.template cast<float>();
  const std::int64_t t = resolve_threads(threads), per = (256 << 10) / (kp * static_cast<std::int64_t>(sizeof(float)));
  const std::int64_t chunks = t * ((n + t * per - 1) / (t * per)), width = (n + chunks - 1) / chunks;
  parallel_for(chunks, threads, [&](std::int64_t c) {
    const Eigen::Index c0 = std::min<Eigen::Index>(n, c * width), len = std::min<Eigen::Index>(width, n - c0);
    if (len > 0) skinny_gemm_t(M.data() + c0, M.outerStride(), m, len, Xp.data(), kp, kp, Yp.data() + c0 * kp, kp);
  });
  Y = Yp.leftCols(k);
}

// Y = M * X in row chunks of M; each chunk is one serial product.
template <class DM, class DX, class Out>
void chunked_mul(const DM& M, const DX& X, Out& Y, int threads) {
  Y.resize(M.rows(), X.cols());
  if constexpr (skinny_operand<DM>()) {
    if (skinny_kernels()) return skinny_mul(M, X, Y, threads);
  }
  const Eigen::Index m = M.rows(), chunks = (m + kRowChunk - 1) / kRowChunk;
  parallel_for(chunks, threads, [&](std::int64_t c) {
    const Eigen::Index r0 = c * kRowChunk, len = std::min(kRowChunk, m - r0);
    Y.middleRows(r0, len).noalias() = M.middleRows(r0, len) * X;
  });
}

// Y = M^T * X in column chunks of M.
template <class DM, class DX, class Out>
void chunked_mul_t(const DM& M, const DX& X, Out& Y, int threads) {
  if constexpr (skinny_operand<DM>()) {
    if (skinny_kernels()) return skinny_mul_t(M, X, Y, threads);
  }
  const Eigen::Index n = M.cols();
  Y.resize(n, X.cols());
  const Eigen::Index chunks = (n + kRowChunk - 1) / kRowChunk;
  parallel_for(chunks, threads, [&](std::int64_t c) {
    const Eigen::Index c0 = c * kRowChunk, len = std::min(kRowChunk, n - c0);
    Y.middleRows(c0, len).noalias() = M.middleCols(c0, len).transpose() * X;
  });
}

// Orthonormal basis of the columns of Y, in place (thin Householder Q).
template <class Dense>
void orthonormalize(Dense& Y) {
  const Eigen::Index m = Y.rows(), k = Y.cols();
  Eigen::HouseholderQR<Dense> qr(Y);
  Y = qr.householderQ() * Dense::Identity(m, k);
}

}  // namespace detail
}  // namespace loftq

#include "macro_unscope.hpp"
