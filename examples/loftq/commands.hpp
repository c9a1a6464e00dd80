#pragma once
// The commands. Each returns the exit status of a success and throws
// InputError, Interrupted or loftq::Error otherwise (main.cpp maps them).

#include "options.hpp"

namespace loftq_cli {

// Sets OpenMP's thread count when --threads was given.
void apply_threads(int threads);

int run_init(const Args& a);   // cmd_init.cpp
int run_model(const Args& a);  // cmd_model.cpp
int run_merge(const Args& a);  // cmd_merge.cpp

}  // namespace loftq_cli
