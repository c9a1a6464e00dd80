#pragma once
// The library's version, as macros for the preprocessor and as a string.
// Kept in step with project(VERSION) in CMakeLists.txt, which the packaging
// test checks against the installed loftqConfigVersion.cmake.

#include <string>

#define LOFTQ_VERSION_MAJOR 0
#define LOFTQ_VERSION_MINOR 3
#define LOFTQ_VERSION_PATCH 0

namespace loftq {

// "MAJOR.MINOR.PATCH".
inline std::string version() {
  return std::to_string(LOFTQ_VERSION_MAJOR) + "." + std::to_string(LOFTQ_VERSION_MINOR) + "." +
         std::to_string(LOFTQ_VERSION_PATCH);
}

}  // namespace loftq
