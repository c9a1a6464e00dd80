// Undefines what macro_scope.hpp defined.

#undef LOFTQ_HAS_AVX2
#undef LOFTQ_HAS_SKINNY_GEMM
#undef LOFTQ_UNROLL
#undef LOFTQ_RESTRICT
