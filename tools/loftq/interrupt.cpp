#include "interrupt.hpp"

#include "errors.hpp"

#include <loftq/io/file.hpp>

#include <pthread.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <csignal>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace loftq_cli {
// ---------------------------------------------------------------------------
// Signals

namespace {

std::atomic<int> g_stage{0};  // 0: nothing staged, 1: staging, 2: the handler is exiting
volatile std::sig_atomic_t g_interrupted = 0;
std::atomic<bool> g_cancel{false};  // Options::cancel: stops a running initialize within a step

extern "C" void on_signal(int) {
  int expected = 0;
  if (g_stage.compare_exchange_strong(expected, 2)) _exit(kExitInterrupted);
  g_interrupted = 1;
  g_cancel.store(true, std::memory_order_relaxed);
}

}  // namespace

void begin_staging() {
  static_assert(std::atomic<int>::is_always_lock_free && std::atomic<bool>::is_always_lock_free,
                "the signal handler needs lock-free atomics");
  int expected = 0;
  if (!g_stage.compare_exchange_strong(expected, 1)) {
    for (;;) pause();
  }
}

void install_signal_handlers() {
  struct sigaction sa;
  std::memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;
  for (int s : {SIGINT, SIGTERM, SIGHUP}) sigaction(s, &sa, nullptr);
  // The library's file writers stop between pieces when it is raised.
  loftq::io::set_write_cancel_flag(&g_cancel);
  // A closed pipe (`loftq ... | head -1`) or a file-size limit (ulimit -f)
  // must not kill the process with staging on disk: ignored, the write
  // fails with EPIPE or EFBIG instead, which is reported and cleaned up;
  // a summary that cannot be printed after publishing costs nothing.
  std::signal(SIGPIPE, SIG_IGN);
  std::signal(SIGXFSZ, SIG_IGN);
}

bool interrupted() { return g_interrupted != 0; }

void check_interrupt() {
  if (interrupted()) throw Interrupted{};
}

const std::atomic<bool>* cancel_flag() { return &g_cancel; }

namespace {
// Every staging directory of the process and the output it stands for.
std::vector<std::pair<std::string, std::string>>& staging_names() {
  static std::vector<std::pair<std::string, std::string>> names;
  return names;
}
}  // namespace

void remember_staging(const std::string& stage, const std::string& shown) {
  staging_names().emplace_back(stage, shown);
}

std::string user_paths(std::string msg) {
  for (const auto& sn : staging_names()) {
    for (std::size_t at = msg.find(sn.first); at != std::string::npos; at = msg.find(sn.first, at + sn.second.size())) {
      msg.replace(at, sn.first.size(), sn.second);
    }
  }
  return msg;
}

void reset_signal_state() {
  g_interrupted = 0;
  g_cancel.store(false);
  g_stage.store(0);
}

void start_threads() {
#ifdef _OPENMP
  const int n = omp_get_max_threads();
  // Started together, as the runtime's pool will be, so that a limit on
  // threads or address space refuses them here with a message of ours.
  std::vector<pthread_t> ts;
  int e = 0;
  for (int i = 1; i < n && e == 0; ++i) {
    pthread_t t;
    e = ::pthread_create(
        &t, nullptr, [](void*) -> void* { return nullptr; }, nullptr);
    if (e == 0) ts.push_back(t);
  }
  for (pthread_t t : ts) ::pthread_join(t, nullptr);
  if (e != 0)
    throw InputError{"cannot start " + std::to_string(n) + " threads: " + std::strerror(e) +
                     " (lower --threads or raise the process limits)"};
  // The pool now, while nothing is staged; later parallel regions reuse it.
  std::atomic<int> started{0};
#pragma omp parallel num_threads(n)
  started.fetch_add(1, std::memory_order_relaxed);
  (void)started;
#endif
}

}  // namespace loftq_cli
