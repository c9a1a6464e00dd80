// Macros of the kernel headers (dispatch.hpp, simd.hpp, gemm.hpp,
// range_finder.hpp, block_quantizer.hpp, residual.hpp). Each includes this
// after its own includes and macro_unscope.hpp at its end, so the names never
// leak into user code. No include guard: every kernel header defines and
// undefines them again.

// Which hand-written kernel families this translation unit compiles. None of
// them depends on the flags the translation unit is compiled with:
//  - x86-64 with GCC or Clang: the AVX2+FMA kernels, compiled through
//    per-function target attributes and chosen at run time when the CPU has
//    both (dispatch.hpp). A build without -mavx2 gets them too, and every
//    translation unit, whatever its -march, compiles the same source, so
//    inline functions linked from differently compiled units stay one
//    definition.
//  - AArch64: the NEON kernels (NEON is part of the base architecture).
// LOFTQ_NO_SIMD compiles neither: only the portable loops.
#if !defined(LOFTQ_NO_SIMD) && defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define LOFTQ_X86_KERNELS 1
#define LOFTQ_TARGET_AVX2 __attribute__((target("avx2,fma")))
#else
#define LOFTQ_X86_KERNELS 0
#define LOFTQ_TARGET_AVX2
#endif
#if !defined(LOFTQ_NO_SIMD) && defined(__aarch64__) && defined(__ARM_NEON)
#define LOFTQ_NEON_KERNELS 1
#else
#define LOFTQ_NEON_KERNELS 0
#endif

#if defined(__clang__)
#define LOFTQ_UNROLL _Pragma("unroll")
#elif defined(__GNUC__)
#define LOFTQ_UNROLL _Pragma("GCC unroll 256")
#else
#define LOFTQ_UNROLL
#endif
#if defined(__GNUC__) || defined(__clang__)
#define LOFTQ_RESTRICT __restrict__
#elif defined(_MSC_VER)
#define LOFTQ_RESTRICT __restrict
#else
#define LOFTQ_RESTRICT
#endif
