#include "progress.hpp"

#include "errors.hpp"

#include <unistd.h>

#include <cmath>
#include <cstdio>

namespace loftq_cli {

namespace {
std::string fmt_duration(double s) {
  if (!std::isfinite(s) || s < 0) s = 0;
  const long t = static_cast<long>(s + 0.5);
  char buf[32];
  std::snprintf(buf, sizeof buf, "%ld:%02ld:%02ld", t / 3600, (t / 60) % 60, t % 60);
  return buf;
}
}  // namespace

Progress::Progress(std::size_t total, bool quiet) : total_(total), quiet_(quiet), tty_(::isatty(2) != 0) {}

void Progress::update(std::size_t done, const std::string& current) {
  if (quiet_) return;
  const double el = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0_).count();
  const double eta = done > 0 ? el / static_cast<double>(done) * static_cast<double>(total_ - done) : 0.0;
  const int pct = total_ ? static_cast<int>(100 * done / total_) : 100;
  char head[128];
  std::snprintf(head, sizeof head, "[%zu/%zu] %3d%%  elapsed %s  ETA %s  ", done, total_, pct, fmt_duration(el).c_str(),
                done > 0 ? fmt_duration(eta).c_str() : "-:--:--");
  if (tty_) {
    std::string bar(20, ' ');
    for (std::size_t i = 0; i < (total_ ? 20 * done / total_ : 20); ++i) bar[i] = '#';
    std::fprintf(stderr, "\r[%s] %s%s\x1b[K", bar.c_str(), head, printable(current).c_str());
    if (done == total_) std::fputc('\n', stderr);
  } else if (done > 0) {
    std::fprintf(stderr, "loftq: %s%s\n", head, printable(current).c_str());
  }
  std::fflush(stderr);
}

}  // namespace loftq_cli
