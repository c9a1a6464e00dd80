// Undefines what macro_scope.hpp defined.

#undef LOFTQ_X86_KERNELS
#undef LOFTQ_TARGET_AVX2
#undef LOFTQ_NEON_KERNELS
#undef LOFTQ_UNROLL
#undef LOFTQ_RESTRICT
