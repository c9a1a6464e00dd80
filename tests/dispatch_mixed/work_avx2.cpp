// Compiled with -mavx2 -mfma: the loftq functions this unit instantiates are
// the same inline definitions as the default unit's, whichever copy the
// linker keeps.
#include "work.hpp"

namespace dispatch_mixed {
Work work_avx2(const loftq::RowMatrix<float>& W) { return work(W); }
}  // namespace dispatch_mixed
