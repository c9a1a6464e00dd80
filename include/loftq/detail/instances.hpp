#pragma once
// Compiling the heavy instantiations once per program.
//
// loftq is header-only, so every translation unit that calls initialize()
// instantiates the whole alternation, Eigen's BDCSVD and the quantizer's
// bit-width dispatch again: about a minute and 2 GB of compiler time each at
// -O3. A program with many such units can instead compile them once:
//
//   - every unit is compiled with LOFTQ_EXTERN_TEMPLATES defined, so the
//     headers declare these instantiations `extern template` and the units
//     only call them;
//   - one unit of the program defines LOFTQ_INSTANTIATE before including
//     <loftq/loftq.hpp>, which turns the same declarations into the explicit
//     instantiation definitions: 1 for the float ones, 2 for the double ones,
//     3 for both (two units, 1 and 2, compile in parallel).
//
// Only the float and double instantiations that depend on nothing but the
// scalar type are covered (the row-major alternation cores, the flat
// quantize/dequantize passes, BDCSVD and HouseholderQR, and in double the
// statistics' accumulation and the blocked Cholesky); everything else stays
// inline. All units must be compiled with the same flags (-march,
// LOFTQ_NO_SIMD), as for any explicit instantiation. Results are
// deterministic either way, but not promised to equal a header-only build's
// bit for bit: where GCC fuses a * b + c into FMA depends on inlining.
//
// Each header lists its own instances under `#ifdef LOFTQ_INSTANCES`.

#if defined(LOFTQ_INSTANTIATE) || defined(LOFTQ_EXTERN_TEMPLATES)
#define LOFTQ_INSTANCES
#if defined(LOFTQ_INSTANTIATE) && (LOFTQ_INSTANTIATE & 1)
#define LOFTQ_INSTANCE_FLOAT template
#else
#define LOFTQ_INSTANCE_FLOAT extern template
#endif
#if defined(LOFTQ_INSTANTIATE) && (LOFTQ_INSTANTIATE & 2)
#define LOFTQ_INSTANCE_DOUBLE template
#else
#define LOFTQ_INSTANCE_DOUBLE extern template
#endif
#endif
