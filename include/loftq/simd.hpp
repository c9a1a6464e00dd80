#pragma once
// Which kernel family this process runs: "avx2+fma" (x86-64 with both),
// "neon" (AArch64) or "portable". It is chosen once, at first use, from the
// CPU, whatever flags the including program was compiled with;
// LOFTQ_SIMD=portable in the environment, or compiling with LOFTQ_NO_SIMD,
// selects "portable". docs/design.md ("SIMD dispatch") says which results agree
// bit for bit across the families.

#include "detail/dispatch.hpp"

namespace loftq {

inline const char* simd_path() {
  switch (detail::simd_path()) {
    case detail::SimdPath::avx2:
      return "avx2+fma";
    case detail::SimdPath::neon:
      return "neon";
    default:
      return "portable";
  }
}

}  // namespace loftq
