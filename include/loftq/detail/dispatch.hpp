#pragma once
// Run-time choice of the kernel family, made once per process: the AVX2+FMA
// kernels on an x86-64 CPU that has both, the NEON kernels on AArch64, the
// portable loops otherwise. The environment variable LOFTQ_SIMD=portable
// (read once, at first use) and force_portable() (for tests comparing the
// paths) select the portable loops on any CPU.

#include <atomic>
#include <cstdlib>
#include <cstring>

#include "macro_scope.hpp"

namespace loftq {
namespace detail {

enum class SimdPath { portable, avx2, neon };

// What the CPU and the environment allow, detected once.
inline SimdPath detected_simd_path() {
  static const SimdPath path = [] {
    const char* env = std::getenv("LOFTQ_SIMD");
    if (env && std::strcmp(env, "portable") == 0) return SimdPath::portable;
#if LOFTQ_X86_KERNELS
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return SimdPath::avx2;
#elif LOFTQ_NEON_KERNELS
    return SimdPath::neon;
#endif
    return SimdPath::portable;
  }();
  return path;
}

inline std::atomic<bool>& portable_forced() {
  static std::atomic<bool> forced{false};
  return forced;
}

// Makes later calls use the portable loops (true) or the detected path
// (false) again. Not meant to change while a computation runs.
inline void force_portable(bool on) { portable_forced().store(on, std::memory_order_relaxed); }

inline SimdPath simd_path() {
  return portable_forced().load(std::memory_order_relaxed) ? SimdPath::portable : detected_simd_path();
}

inline bool use_avx2() { return LOFTQ_X86_KERNELS && simd_path() == SimdPath::avx2; }
inline bool use_neon() { return LOFTQ_NEON_KERNELS && simd_path() == SimdPath::neon; }

// Scoped force_portable for tests.
class PortableScope {
 public:
  PortableScope() : was_(portable_forced().load()) { force_portable(true); }
  ~PortableScope() { force_portable(was_); }
  PortableScope(const PortableScope&) = delete;
  PortableScope& operator=(const PortableScope&) = delete;

 private:
  bool was_;
};

}  // namespace detail
}  // namespace loftq

#include "macro_unscope.hpp"
