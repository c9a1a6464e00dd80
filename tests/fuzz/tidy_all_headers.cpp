// Every library header in one translation unit, for clang-tidy and cppcheck
// (see .clang-tidy). Not built by CMake.
#include <loftq/io/bnb.hpp>
#include <loftq/io/calibration.hpp>
#include <loftq/io/imatrix.hpp>
#include <loftq/io/llama_names.hpp>
#include <loftq/io/npy.hpp>
#include <loftq/io/peft.hpp>
#include <loftq/io/safetensors.hpp>
#include <loftq/io/statistics.hpp>
#include <loftq/loftq.hpp>

int main() { return 0; }
