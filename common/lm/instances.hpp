#pragma once
// Compiling the LM's passes once per program, as
// include/loftq/detail/instances.hpp does for the library's kernels: the
// forward and backward passes and the statistics' collection, in float and
// double, are most of the compile time of every unit that runs the model
// (the LM's tests, lm_finetune, `loftq calibrate`, bench_calibrate).
//
//   - units compiled with LOFTQ_LM_EXTERN_TEMPLATES (CMake target
//     loftq_lm_instances) see them declared `extern template` and only call
//     them;
//   - common/lm/instances.cpp defines LOFTQ_LM_INSTANTIATE and compiles them.
//
// Each header lists its own under `#ifdef LOFTQ_LM_INSTANCE`.

#if defined(LOFTQ_LM_INSTANTIATE)
#define LOFTQ_LM_INSTANCE template
#elif defined(LOFTQ_LM_EXTERN_TEMPLATES)
#define LOFTQ_LM_INSTANCE extern template
#endif
