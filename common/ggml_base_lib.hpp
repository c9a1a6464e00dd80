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

// That library with its ggml_quantize_chunk(type, src, dst, start, nrows,
// n_per_row, imatrix) in `fn` (nullptr if the library lacks it), or nullptr
// with `why` saying what is missing.
using GgmlQuantizeChunk = std::size_t (*)(int, const float*, void*, std::int64_t, std::int64_t, std::int64_t,
                                          const float*);
inline void* open_ggml_quantize_chunk(std::string& why, GgmlQuantizeChunk& fn) {
  void* lib = open_ggml_base(why);
  fn = lib ? reinterpret_cast<GgmlQuantizeChunk>(dlsym(lib, "ggml_quantize_chunk")) : nullptr;
  return lib;
}

}  // namespace loftq_common
