#pragma once
// `loftq model` keeps the OpenMP threads computing: a prefetch thread reads
// and converts the next target while the current one is computed, and a
// writer thread converts and writes finished results (and copies the tensors
// that are not targets) in submission order. Both do memory-bound work that
// is short next to a target's computation. The prefetch thread runs niced
// (+10), so that where it competes with the computation for a core the
// computation keeps most of it; the writer is not, so that a written result's
// memory is freed promptly.
//
// Failures on either thread (an unreadable tensor, a full disk, a signal seen
// by check_interrupt()) are rethrown on the calling thread at its next
// next()/submit()/finish(). Destructors stop and join their thread, dropping
// any work not yet started; a writer task already running is completed.

#include "source.hpp"

#include <Eigen/Core>
#include <condition_variable>
#include <deque>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

namespace loftq_cli {

// Reads the targets of `order` from `src`, in that order, one ahead of the
// consumer, into two buffers allocated once (the largest target's size), so no
// target's weights are faulted in page by page again.
class TensorPrefetcher {
 public:
  struct Loaded {
    const ModelTarget* target;
    ConstMapF W;  // valid until the next call of next()
    double w2;    // W.cast<double>().squaredNorm(), computed on the prefetch thread
  };

  TensorPrefetcher(const Source& src, std::vector<const ModelTarget*> order);
  ~TensorPrefetcher();
  TensorPrefetcher(const TensorPrefetcher&) = delete;
  TensorPrefetcher& operator=(const TensorPrefetcher&) = delete;

  // The next target of `order`; blocks until it is read. Rethrows a read failure.
  Loaded next();

 private:
  struct Slot {
    std::unique_ptr<float[]> data;
    double w2 = 0;
    bool ready = false;
    std::exception_ptr error;
  };
  void run();

  const Source& src_;
  std::vector<const ModelTarget*> order_;
  Slot slots_[2];
  std::size_t taken_ = 0;  // targets handed out by next()
  bool stop_ = false;
  std::mutex m_;
  std::condition_variable cv_;
  std::thread thread_;
};

// Runs tasks in submission order on one thread. submit() blocks until the
// previous task is done, so one result at most is held on its way to disk
// while the next is computed (writing a target takes a fraction of its
// computation, so the wait is rare).
class BackgroundWriter {
 public:
  BackgroundWriter();
  ~BackgroundWriter();
  BackgroundWriter(const BackgroundWriter&) = delete;
  BackgroundWriter& operator=(const BackgroundWriter&) = delete;

  void submit(std::function<void()> task);
  // Waits for every task; rethrows the first failure.
  void finish();

 private:
  void run();
  void rethrow_locked();

  std::deque<std::function<void()>> queue_;
  bool busy_ = false, stop_ = false;
  std::exception_ptr error_;
  std::mutex m_;
  std::condition_variable cv_;
  std::thread thread_;
};

}  // namespace loftq_cli
