#pragma once
// Large working buffers. A fresh 4096 x 4096 float buffer is first touched
// 4 KB page by 4 KB page: 16K page faults, measured at 45 ms on the 2-core
// VMs here, longer than a whole quantization pass over it. Linux's
// transparent huge pages are most often in "madvise" mode, where the kernel
// only backs a range with 2 MB pages if asked; asked, the same first touch
// took 12 ms. The advice changes no result, and where it is unavailable or
// refused nothing happens.

#include <Eigen/Core>
#include <cstddef>
#include <cstdint>

#if defined(__linux__)
#include <sys/mman.h>
#include <unistd.h>
#endif

namespace loftq {
namespace detail {

inline void advise_huge_pages(void* p, std::size_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  if (bytes < (std::size_t{8} << 20)) return;  // a few huge pages at most: not worth a syscall
  const long ps = sysconf(_SC_PAGESIZE);
  if (ps <= 0) return;
  const auto page = static_cast<std::uintptr_t>(ps);
  const auto a = reinterpret_cast<std::uintptr_t>(p), e = a + bytes, s = (a + page - 1) & ~(page - 1);
  if (e > s) (void)madvise(reinterpret_cast<void*>(s), e - s, MADV_HUGEPAGE);  // advice only
#else
  (void)p;
  (void)bytes;
#endif
}

// Resizes a dense matrix to rows x cols, and when that allocates, advises the
// new storage before anything touches it. Contents are unspecified after a
// size change, as with Eigen's resize().
template <class Dense>
void resize_large(Dense& M, Eigen::Index rows, Eigen::Index cols) {
  if (M.rows() == rows && M.cols() == cols) return;
  M.resize(rows, cols);
  advise_huge_pages(M.data(), static_cast<std::size_t>(M.size()) * sizeof(typename Dense::Scalar));
}

}  // namespace detail
}  // namespace loftq
