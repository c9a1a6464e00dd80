#pragma once
// `loftq model` keeps the OpenMP threads computing: a prefetch thread reads
// and converts the next target while the current one is computed, and a
// writer thread converts and writes finished results (and copies the tensors
// that are not targets) in submission order. Both do memory-bound work that
// is short next to a target's computation. The prefetch thread runs niced
// (+10), so that where it competes with the computation for a core the
// computation keeps most of it; the writer is not, so that a written result's
// memory is freed promptly. The overlap is bounded (ResidentBound): where the
// targets are large (a 70B model's FFN matrices), a target is read only once
// the memory it needs is free, and computed without overlap.
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
#include <limits>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

namespace loftq_cli {

// Resident bytes the pipeline may hold at once: the float weights read (the
// target being computed and the one read ahead) and, per target handed out and
// not yet released, what its computation and result hold (`work_per_weight`
// bytes per byte of its float weights: the residual that becomes Q, the code
// arrays). A target is read ahead, and one handed out, only when its bytes
// keep the total within `bytes`; otherwise the pipeline waits for the writer
// and computes without overlap. A target that alone exceeds the bound still
// runs, with nothing else held.
struct ResidentBound {
  std::uint64_t bytes = std::numeric_limits<std::uint64_t>::max();
  double work_per_weight = 0;
};

// The bound `loftq model` runs with: computing a target holds its weights and
// about 1.75 times their bytes (the residual that becomes Q, and three arrays
// of codes and scales at up to a byte per weight), so three times the largest
// target's float weights leave room for the next one read ahead, or the
// previous one being written, only while those are small; never below 2 GiB,
// where every overlap of a LLaMA-2-7B-shaped model fits.
ResidentBound default_resident_bound(const std::vector<const ModelTarget*>& order);

// Reads the targets of `order` from `src`, in that order, one ahead of the
// consumer, into two buffers reused while they are large enough, so no
// target's weights are faulted in page by page again; a buffer is freed when
// the bound needs its bytes.
class TensorPrefetcher {
 public:
  struct Loaded {
    const ModelTarget* target;
    ConstMapF W;  // valid until the next call of next()
    double w2;    // W.cast<double>().squaredNorm(), computed on the prefetch thread
  };

  TensorPrefetcher(const Source& src, std::vector<const ModelTarget*> order, ResidentBound bound = {});
  ~TensorPrefetcher();
  TensorPrefetcher(const TensorPrefetcher&) = delete;
  TensorPrefetcher& operator=(const TensorPrefetcher&) = delete;

  // The next target of `order`; blocks until it is read and the bound admits
  // its computation. Rethrows a read failure.
  Loaded next();
  // The computation and result of a target next() handed out are freed.
  // Thread-safe (the writer thread calls it).
  void release(const ModelTarget& t);
  // How many targets were read while the consumer still held the one before.
  std::size_t read_ahead() const;

 private:
  struct Slot {
    std::unique_ptr<float[]> data;
    std::uint64_t capacity = 0;  // floats in data
    double w2 = 0;
    bool ready = false;
    std::exception_ptr error;
  };
  void run();
  std::uint64_t work_bytes(const ModelTarget& t) const;
  // The bytes held when slot `fill` holds `floats` (the other slot as it is).
  std::uint64_t held_with(const Slot& fill, std::uint64_t floats) const;

  const Source& src_;
  std::vector<const ModelTarget*> order_;
  ResidentBound bound_;
  Slot slots_[2];
  std::size_t taken_ = 0;      // targets handed out by next()
  std::size_t given_up_ = 0;   // targets whose weights the consumer no longer reads
  std::size_t ahead_ = 0;      // targets read while the consumer held the one before
  std::uint64_t pending_ = 0;  // work bytes of targets handed out and not released
  bool stop_ = false;
  mutable std::mutex m_;
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
