#include "source.hpp"

#include "source_gguf.hpp"
#include "source_safetensors.hpp"

namespace loftq_cli {

std::unique_ptr<Source> open_source(const Args& a) {
  if (a.gguf) return std::make_unique<GgufSource>(a);
  return std::make_unique<SafetensorsSource>(a);
}

}  // namespace loftq_cli
