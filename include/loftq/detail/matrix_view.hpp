#pragma once
// Any dense Eigen input as a validated row-major array: the entry step of
// every public function that takes a weight matrix.

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

#include "../error.hpp"
#include "memory.hpp"
#include "parallel.hpp"

namespace loftq {
namespace detail {

// A row-major contiguous view of any dense expression, copying only when the
// expression is not already laid out that way.
template <class Derived>
class RowMajorView {
 public:
  using Scalar = typename Derived::Scalar;
  explicit RowMajorView(const Eigen::MatrixBase<Derived>& W) {
    if constexpr (static_cast<bool>(Derived::Flags & Eigen::DirectAccessBit) &&
                  static_cast<bool>(Derived::IsRowMajor)) {
      const auto& d = W.derived();
      if (d.innerStride() == 1 && (d.rows() <= 1 || d.outerStride() == d.cols())) {
        ptr_ = d.data();
        return;
      }
    }
    resize_large(copy_, W.rows(), W.cols());
    copy_ = W;
    ptr_ = copy_.data();
  }
  const Scalar* data() const { return ptr_; }

 private:
  Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> copy_;
  const Scalar* ptr_ = nullptr;
};

template <class Scalar>
bool all_finite(const Scalar* x, std::int64_t N, int threads) {
  const std::int64_t chunk = 1 << 16, chunks = (N + chunk - 1) / chunk;
  std::vector<unsigned char> bad(static_cast<std::size_t>(chunks), 0);
  parallel_for(chunks, threads, [&](std::int64_t c) {
    const std::int64_t b = c * chunk, e = std::min(N, b + chunk);
    // |x| <= max is false exactly for NaN and +-Inf, and unlike
    // Eigen's allFinite() this loop vectorizes.
    int nonfinite = 0;
    for (std::int64_t i = b; i < e; ++i) nonfinite |= !(std::abs(x[i]) <= std::numeric_limits<Scalar>::max());
    bad[static_cast<std::size_t>(c)] = static_cast<unsigned char>(nonfinite);
  });
  return std::find(bad.begin(), bad.end(), 1) == bad.end();
}

// Validates W as seen through its row-major view. The finiteness scan can be
// skipped where the quantization pass itself rejects NaN/Inf (checked_scale)
// before anything the caller owns is written.
template <class Derived>
void check_weights(const Eigen::MatrixBase<Derived>& W, const typename Derived::Scalar* data, int threads,
                   const char* what, bool scan_finite = true) {
  using Scalar = typename Derived::Scalar;
  static_assert(std::is_same<Scalar, float>::value || std::is_same<Scalar, double>::value,
                "loftq works on float or double matrices");
  require(
      W.rows() > 0 && W.cols() > 0, Errc::invalid_argument,
      std::string(what) + ": the matrix is empty (" + std::to_string(W.rows()) + "x" + std::to_string(W.cols()) + ")");
  require(!scan_finite || all_finite(data, static_cast<std::int64_t>(W.size()), threads), Errc::non_finite,
          std::string(what) + ": the matrix contains NaN or Inf");
}

}  // namespace detail
}  // namespace loftq
