#pragma once
// Signals and the process state around them (the behaviour is described in
// staged_output.hpp): until staging starts a SIGINT/SIGTERM/SIGHUP ends the
// process at once; from then on it raises a flag that the run checks.

#include <atomic>
#include <string>

namespace loftq_cli {

// Installs the SIGINT/SIGTERM/SIGHUP handlers described above.
void install_signal_handlers();
// Throws Interrupted when a signal arrived since stage().
void check_interrupt();
// Whether one did (for loops that clean up before throwing).
bool interrupted();
// Raised by the same signals; library_options() hands it to the library as
// Options::cancel, so a signal stops a tensor's computation within a step.
const std::atomic<bool>* cancel_flag();
// `msg` with every staging directory this process created replaced by the
// output it stands for: messages name the user's paths, which exist.
std::string user_paths(std::string msg);
// Starts the OpenMP threads a run will use (omp_get_max_threads()); throws
// InputError when they cannot be created. stage() calls it first.
void start_threads();
// Back to "nothing staged": a later signal ends the process at once again.
// For a process that runs several commands in turn (the fuzz target).
void reset_signal_state();

// Moves to "staging": from now on a signal only raises the flag. If a
// handler has already claimed the exit, waits for it. StagedOutput::stage()
// calls it.
void begin_staging();
// Records a staging directory and the output it stands for (user_paths).
void remember_staging(const std::string& stage, const std::string& shown);

}  // namespace loftq_cli
