// Macros of the kernel headers (simd.hpp, gemm.hpp, range_finder.hpp,
// block_quantizer.hpp). Each includes this after its own includes and
// macro_unscope.hpp at its end, so the names never leak into user code. No
// include guard: every kernel header defines and undefines them again.

// Which hand-written kernels this translation unit compiles: the AVX2 ones
// when it is compiled for AVX2 (the skinny products also need FMA), unless
// LOFTQ_NO_SIMD asks for the portable loops.
#if defined(__AVX2__) && !defined(LOFTQ_NO_SIMD)
#define LOFTQ_HAS_AVX2 1
#else
#define LOFTQ_HAS_AVX2 0
#endif
#if LOFTQ_HAS_AVX2 && defined(__FMA__)
#define LOFTQ_HAS_SKINNY_GEMM 1
#else
#define LOFTQ_HAS_SKINNY_GEMM 0
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
