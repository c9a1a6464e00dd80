// The LM's float and double passes, compiled once for the programs that link
// loftq_lm_instances (common/lm/instances.hpp).
#define LOFTQ_LM_INSTANTIATE 1
#include "common/lm/layer_source.hpp"
