// loftq: the command-line tool.
//
//   loftq init  --input W.npy --output DIR [options]     one matrix
//   loftq model --input PATH  --output DIR [options]     a safetensors checkpoint
//   loftq merge --input PATH  --shards D1,D2,... --output DIR
//
// See `loftq --help` (generated from options.cpp) and README.md.
//
// Exit codes: 0 success, 1 bad input or failure (one line on stderr, no output
// written), 2 usage error, 130 interrupted (no output written). Output is all
// or nothing (staged_output.hpp).

#include "commands.hpp"
#include "errors.hpp"
#include "options.hpp"
#include "staged_output.hpp"

#include <loftq/error.hpp>

#include <cstdio>
#include <exception>
#include <new>
#include <string>
#include <vector>

namespace {

using namespace loftq_cli;

void print_error(const std::string& msg) {
  std::fprintf(stderr, "loftq: error: %s\n", one_line(user_paths(msg)).c_str());
}

int dispatch(const std::vector<std::string>& argv) {
  const Parsed p = parse_args(argv);
  switch (p.action) {
    case Parsed::Action::usage_help:
      std::fputs(p.text.c_str(), stderr);
      return kExitUsage;
    case Parsed::Action::help:
    case Parsed::Action::version:
      std::fputs(p.text.c_str(), stdout);
      return kExitOk;
    case Parsed::Action::run:
      break;
  }
  install_signal_handlers();
  if (p.args.command == "model") return run_model(p.args);
  if (p.args.command == "merge") return run_merge(p.args);
  if (p.args.command == "calibrate") return run_calibrate(p.args);
  return run_init(p.args);
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return dispatch(std::vector<std::string>(argv + (argc > 0 ? 1 : 0), argv + argc));
  } catch (const UsageError& e) {
    std::fprintf(stderr, "loftq: error: %s (see 'loftq --help')\n", one_line(e.msg).c_str());
    return kExitUsage;
  } catch (const InputError& e) {
    print_error(e.msg);
  } catch (const Interrupted&) {
    print_error("interrupted; no output written");
    return kExitInterrupted;
  } catch (const loftq::Error& e) {
    if (e.code() == loftq::Errc::cancelled) {  // a file writer saw the signal
      print_error("interrupted; no output written");
      return kExitInterrupted;
    }
    print_error(e.what());
  } catch (const std::bad_alloc&) {
    print_error("out of memory");
  } catch (const std::exception& e) {
    print_error(e.what());
  } catch (...) {
    print_error("unknown failure");
  }
  return kExitBadInput;
}
