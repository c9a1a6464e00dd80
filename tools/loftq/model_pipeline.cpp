#include "model_pipeline.hpp"

#include <loftq/huge_pages.hpp>

#include <algorithm>
#include <cerrno>

#if defined(__linux__)
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

namespace loftq_cli {

namespace {

// The prefetch thread runs niced by this much: when it competes with the
// computation for a core, the scheduler gives it a small share of it, and it
// takes up the slack while the computation waits on it. The writer is not
// niced: on a busy machine it would hold each result's Q, an m x n buffer,
// while the next target's residual is filled, raising the peak memory by one
// such buffer (bench/README.md, "Page zeroing").
constexpr int kBackgroundNice = 10;

// Lowers the calling thread's priority by kBackgroundNice. Linux keeps a nice
// value per thread; elsewhere nothing happens. Raising nice is always
// allowed, so this cannot fail for lack of privilege.
void lower_thread_priority() {
#if defined(__linux__)
  const auto tid = static_cast<id_t>(syscall(SYS_gettid));
  errno = 0;
  const int now = getpriority(PRIO_PROCESS, tid);
  if (errno == 0) (void)setpriority(PRIO_PROCESS, tid, std::min(19, now + kBackgroundNice));
#endif
}

}  // namespace

// ---------------------------------------------------------------------------
// TensorPrefetcher

TensorPrefetcher::TensorPrefetcher(const Source& src, std::vector<const ModelTarget*> order)
    : src_(src), order_(std::move(order)) {
  if (!order_.empty()) thread_ = std::thread([this] { run(); });
}

TensorPrefetcher::~TensorPrefetcher() {
  {
    std::lock_guard<std::mutex> lk(m_);
    stop_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void TensorPrefetcher::run() {
  lower_thread_priority();
  std::uint64_t capacity = 0;
  for (const ModelTarget* t : order_) capacity = std::max(capacity, t->rows * t->cols);
  for (std::size_t k = 0; k < order_.size(); ++k) {
    Slot& s = slots_[k % 2];
    {
      // Target k reuses the buffer of k - 2, which the consumer gives up when it takes k.
      std::unique_lock<std::mutex> lk(m_);
      cv_.wait(lk, [&] { return stop_ || k < 2 || taken_ >= k; });
      if (stop_) return;
    }
    std::exception_ptr error;
    double w2 = 0;
    try {
      const ModelTarget& t = *order_[k];
      if (!s.data) {
        s.data.reset(new float[static_cast<std::size_t>(capacity)]);
        loftq::advise_huge_pages(s.data.get(), static_cast<std::size_t>(capacity) * sizeof(float));
      }
      src_.read(t, s.data.get());
      // The same expression as before the prefetch thread existed, so the
      // reported squared errors keep their last bits.
      w2 = ConstMapF(s.data.get(), static_cast<Eigen::Index>(t.rows), static_cast<Eigen::Index>(t.cols))
               .cast<double>()
               .squaredNorm();
    } catch (...) {
      error = std::current_exception();
    }
    {
      std::lock_guard<std::mutex> lk(m_);
      s.w2 = w2;
      s.error = error;
      s.ready = true;
    }
    cv_.notify_all();
    if (error) return;
  }
}

TensorPrefetcher::Loaded TensorPrefetcher::next() {
  std::unique_lock<std::mutex> lk(m_);
  const std::size_t k = taken_;
  Slot& s = slots_[k % 2];
  cv_.wait(lk, [&] { return s.ready; });
  if (s.error) std::rethrow_exception(s.error);
  s.ready = false;
  ++taken_;
  lk.unlock();
  cv_.notify_all();
  const ModelTarget* t = order_[k];
  return {t, ConstMapF(s.data.get(), static_cast<Eigen::Index>(t->rows), static_cast<Eigen::Index>(t->cols)), s.w2};
}

// ---------------------------------------------------------------------------
// BackgroundWriter

BackgroundWriter::BackgroundWriter() : thread_([this] { run(); }) {}

BackgroundWriter::~BackgroundWriter() {
  {
    std::lock_guard<std::mutex> lk(m_);
    stop_ = true;
    queue_.clear();
  }
  cv_.notify_all();
  thread_.join();
}

void BackgroundWriter::run() {
  for (;;) {
    std::function<void()> task;
    {
      std::unique_lock<std::mutex> lk(m_);
      cv_.wait(lk, [&] { return stop_ || !queue_.empty(); });
      if (stop_) return;
      task = std::move(queue_.front());
      queue_.pop_front();
      busy_ = true;
    }
    std::exception_ptr error;
    try {
      task();
    } catch (...) {
      error = std::current_exception();
    }
    task = nullptr;  // frees what the task held (a result) before the next one is taken
    {
      std::lock_guard<std::mutex> lk(m_);
      busy_ = false;
      if (error && !error_) error_ = error;
      if (error_) queue_.clear();  // later writes would follow a failed one
    }
    cv_.notify_all();
  }
}

void BackgroundWriter::rethrow_locked() {
  if (error_) {
    std::exception_ptr e = error_;
    std::rethrow_exception(e);
  }
}

void BackgroundWriter::submit(std::function<void()> task) {
  std::unique_lock<std::mutex> lk(m_);
  cv_.wait(lk, [&] { return error_ || (queue_.empty() && !busy_); });
  rethrow_locked();
  queue_.push_back(std::move(task));
  lk.unlock();
  cv_.notify_all();
}

void BackgroundWriter::finish() {
  std::unique_lock<std::mutex> lk(m_);
  cv_.wait(lk, [&] { return error_ || (queue_.empty() && !busy_); });
  rethrow_locked();
}

}  // namespace loftq_cli
