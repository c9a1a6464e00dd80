#pragma once
// ggml's own quantizer for the tests that compare bytes with it.
#include <doctest/doctest.h>

#include "common/ggml_base_lib.hpp"

namespace loftq_test {

// ggml.chunk, or nullptr after a MESSAGE saying why the calling test is
// skipped (no llama.cpp libraries); a library without the symbol fails.
inline loftq_common::GgmlQuantizeChunk ggml_quantize_chunk_or_skip(const loftq_common::GgmlQuantizeChunkLib& ggml) {
  if (!ggml.lib) {
    MESSAGE("skipped: " << ggml.why);
    return nullptr;
  }
  REQUIRE((ggml.chunk != nullptr));
  return ggml.chunk;
}

}  // namespace loftq_test
