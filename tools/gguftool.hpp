#pragma once
// loftq_gguf_tool's shared pieces: its one-line failure, and the checks of
// `loftq model --format gguf` outputs (gguftool_verify.cpp), which the input
// makers and main() of gguftool.cpp dispatch to.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "common/gguf_layout.hpp"

namespace gguftool {

namespace gl = gguf_layout;

[[noreturn]] inline void die(const std::string& m) {
  std::fprintf(stderr, "gguftool: %s\n", m.c_str());
  std::exit(1);
}
inline void require(bool ok, const std::string& m) {
  if (!ok) die(m);
}

int cmd_verify(const std::string& in_path, const std::string& dir, const std::string& quant, long rank, int iters,
               double alpha, const std::string& scale, const std::string& atype);
int cmd_verify_budget(const std::string& in_path, const std::string& dir, double budget);
int cmd_verify_mix(const std::string& in_path, const std::string& dir, const std::string& mix_name, long rank,
                   int iters, const std::string& scale);

}  // namespace gguftool
