#pragma once
// The prebuilt llama.cpp libraries some tests compare with (ggml's own bytes,
// sizes and decoders): their directory is LOFTQ_LLAMA_CPP_DIR from the
// environment, else the one the build was configured with (the macro of that
// name, when the including target defines it).

#include <dlfcn.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>

namespace loftq_common {

inline std::string llama_cpp_dir() {
  const char* env = std::getenv("LOFTQ_LLAMA_CPP_DIR");
  std::string dir = env ? env : "";
#ifdef LOFTQ_LLAMA_CPP_DIR
  if (dir.empty()) dir = LOFTQ_LLAMA_CPP_DIR;
#endif
  return dir;
}

// That directory's libggml-base.so, or nullptr with `why` saying what is missing.
inline void* open_ggml_base(std::string& why) {
  const std::string dir = llama_cpp_dir();
  if (dir.empty()) {
    why = "set LOFTQ_LLAMA_CPP_DIR to the directory of a prebuilt libggml-base.so";
    return nullptr;
  }
  void* lib = dlopen((dir + "/libggml-base.so").c_str(), RTLD_NOW | RTLD_LOCAL);
  if (!lib) why = "cannot load " + dir + "/libggml-base.so: " + dlerror();
  return lib;
}

// libggml-base's ggml_quantize_chunk(type, src, dst, start, nrows, n_per_row,
// imatrix), loaded for the object's life: `lib` is nullptr when the library is
// missing (`why` says what to set), `chunk` nullptr when it lacks the symbol.
using GgmlQuantizeChunk = std::size_t (*)(int, const float*, void*, std::int64_t, std::int64_t, std::int64_t,
                                          const float*);
struct GgmlQuantizeChunkLib {
  std::string why;
  void* lib = open_ggml_base(why);
  GgmlQuantizeChunk chunk = lib ? reinterpret_cast<GgmlQuantizeChunk>(dlsym(lib, "ggml_quantize_chunk")) : nullptr;

  GgmlQuantizeChunkLib() = default;
  GgmlQuantizeChunkLib(const GgmlQuantizeChunkLib&) = delete;
  GgmlQuantizeChunkLib& operator=(const GgmlQuantizeChunkLib&) = delete;
  ~GgmlQuantizeChunkLib() {
    if (lib) dlclose(lib);
  }
};

}  // namespace loftq_common
