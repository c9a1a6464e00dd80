#include "model_pipeline.hpp"

#include <loftq/huge_pages.hpp>

#include <algorithm>
#include <cerrno>
#include <cmath>

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
// such buffer (bench/whole_model.md, "Page zeroing").
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

ResidentBound default_resident_bound(const std::vector<const ModelTarget*>& order) {
  std::uint64_t largest = 0;
  for (const ModelTarget* t : order) largest = std::max(largest, t->rows * t->cols * sizeof(float));
  return {std::max<std::uint64_t>(3 * largest, std::uint64_t(2) << 30), 1.75};
}

TensorPrefetcher::TensorPrefetcher(const Source& src, std::vector<const ModelTarget*> order, ResidentBound bound)
    : src_(src), order_(std::move(order)), bound_(bound) {
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

namespace {

std::uint64_t floats_of(const ModelTarget& t) { return t.rows * t.cols; }

}  // namespace

std::uint64_t TensorPrefetcher::work_bytes(const ModelTarget& t) const {
  return static_cast<std::uint64_t>(
      std::ceil(static_cast<double>(floats_of(t) * sizeof(float)) * bound_.work_per_weight));
}

std::uint64_t TensorPrefetcher::held_with(const Slot& fill, std::uint64_t floats) const {
  const Slot& other = &fill == &slots_[0] ? slots_[1] : slots_[0];
  return (other.capacity + floats) * sizeof(float) + pending_;
}

void TensorPrefetcher::run() {
  lower_thread_priority();
  for (std::size_t k = 0; k < order_.size(); ++k) {
    Slot& s = slots_[k % 2];
    Slot& other = slots_[(k + 1) % 2];
    const ModelTarget& t = *order_[k];
    const std::uint64_t n = floats_of(t);
    {
      // Target k reuses the buffer of k - 2, which the consumer gives up when it takes k - 1; and
      // next() may free the other buffer until it has taken k - 1.
      std::unique_lock<std::mutex> lk(m_);
      cv_.wait(lk, [&] { return stop_ || k == 0 || taken_ >= k; });
      for (;;) {
        if (stop_) return;
        if (held_with(s, std::max(s.capacity, n)) <= bound_.bytes) break;
        // Over the bound: first the bytes nobody reads, then wait for the consumer or the writer.
        const bool other_idle = k == 0 || given_up_ >= k;
        if (s.capacity > n) {
          s.data.reset();
          s.capacity = 0;
        } else if (other_idle && other.capacity > 0) {
          other.data.reset();
          other.capacity = 0;
        } else if (other_idle && pending_ == 0) {
          break;  // nothing else is held: the target runs alone
        } else {
          cv_.wait(lk);
        }
      }
      if (k > 0 && given_up_ < k) ++ahead_;
      if (s.capacity < n) {
        s.data.reset();
        s.capacity = n;  // counted from now; allocated below, outside the lock
      }
    }
    std::exception_ptr error;
    double w2 = 0;
    try {
      if (!s.data) {
        s.data.reset(new float[static_cast<std::size_t>(s.capacity)]);
        loftq::advise_huge_pages(s.data.get(), static_cast<std::size_t>(s.capacity) * sizeof(float));
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
  given_up_ = k;  // the weights of k - 1 are no longer read
  cv_.notify_all();
  Slot& s = slots_[k % 2];
  Slot& other = slots_[(k + 1) % 2];  // idle: refilled only once k is taken
  cv_.wait(lk, [&] { return s.ready; });
  if (s.error) std::rethrow_exception(s.error);
  const ModelTarget* t = order_[k];
  const std::uint64_t work = work_bytes(*t);
  while ((s.capacity + other.capacity) * sizeof(float) + pending_ + work > bound_.bytes) {
    if (other.capacity > 0) {
      other.data.reset();
      other.capacity = 0;
    } else if (pending_ == 0) {
      break;
    } else {
      cv_.wait(lk);  // for the writer's release()
    }
  }
  s.ready = false;
  pending_ += work;
  ++taken_;
  lk.unlock();
  cv_.notify_all();
  return {t, ConstMapF(s.data.get(), static_cast<Eigen::Index>(t->rows), static_cast<Eigen::Index>(t->cols)), s.w2};
}

void TensorPrefetcher::release(const ModelTarget& t) {
  {
    std::lock_guard<std::mutex> lk(m_);
    pending_ -= std::min(pending_, work_bytes(t));
  }
  cv_.notify_all();
}

std::size_t TensorPrefetcher::read_ahead() const {
  std::lock_guard<std::mutex> lk(m_);
  return ahead_;
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
