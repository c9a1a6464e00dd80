// The heavy double instantiations, compiled once for the project's own
// programs, which are built with LOFTQ_EXTERN_TEMPLATES (see
// include/loftq/detail/instances.hpp).
#define LOFTQ_INSTANTIATE 2
#include <loftq/loftq.hpp>
