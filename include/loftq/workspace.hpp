#pragma once
// loftq::Workspace: the large buffers of initialize(), kept from one call to
// the next.
//
// A call needs an m x n residual (returned as Result::Q), three packed code
// sets (one returned as Result::packed) and, with statistics, an m x n image of
// the residual in the output metric. Allocated fresh, each of their pages is
// zeroed by the kernel when first touched (a quarter of the CPU time of `loftq
// init` on a 7B-shaped matrix, bench/whole_model.md). A workspace keeps them:
//
//   loftq::Workspace<float> ws;
//   for (const auto& W : weights) {
//     loftq::Result<float> r = loftq::initialize(W, quantizer, opt, ws);
//     consume(r);
//     ws.recycle(std::move(r));  // optional: Q and the codes serve the next call
//   }
//
// Without recycle() a call still reuses everything but the two buffers its
// Result takes away. An m x n buffer serves a call whose m * n is the same
// (Eigen reallocates on any other size); a code set serves any call whose
// codes fit in it. What is kept is bounded so that a workspace does not raise
// a program's peak memory: at most kSpareMatrices matrices and kSparePacked
// code sets (the least recently returned freed first), and a call that must
// allocate a buffer first frees every spare of that kind, none of which fits,
// so that the process never grows while holding idle buffers. release() frees
// everything.
//
// Results are bit-identical with and without a workspace, whatever it holds.
// Thread rule: one call at a time per workspace, as for an Eigen decomposition
// object; each worker thread holds its own. A call (initialize, recycle,
// release) that overlaps another call on the same workspace throws
// Error(Errc::invalid_argument) instead of racing.

#include <Eigen/Core>
#include <algorithm>
#include <atomic>
#include <cstddef>
#include <utility>
#include <vector>

#include "detail/block_quantizer.hpp"
#include "detail/memory.hpp"
#include "error.hpp"
#include "options.hpp"
#include "packed.hpp"

namespace loftq {

template <class Scalar>
class Workspace;

namespace detail {
template <class Scalar>
class WorkspaceLease;
}  // namespace detail

template <class Scalar>
class Workspace {
 public:
  // What one call takes: a residual and, data-aware, the metric's image; and
  // three code sets (current, next and best).
  static constexpr std::size_t kSpareMatrices = 2;
  static constexpr std::size_t kSparePacked = 3;

  Workspace() = default;
  Workspace(const Workspace&) = delete;
  Workspace& operator=(const Workspace&) = delete;

  // Takes the storage of a result the caller is done with (Q and the packed
  // codes; A and B are small); `r` is left empty.
  void recycle(Result<Scalar>&& r);
  // Frees every buffer.
  void release();
  // The bytes of the buffers held between calls.
  std::size_t bytes() const;

 private:
  friend class detail::WorkspaceLease<Scalar>;

  std::vector<RowMatrix<Scalar>> matrices_;  // spare m x n buffers, least recently returned first
  std::vector<PackedMatrix> packed_;         // spare code sets
  std::vector<float> fractions_;             // the warm scale search's per-block state
  std::atomic<bool> busy_{false};
};

namespace detail {

// One call's hold on a workspace (or on none: then every buffer is allocated
// as without one). It marks the workspace busy for its lifetime.
template <class Scalar>
class WorkspaceLease {
 public:
  explicit WorkspaceLease(Workspace<Scalar>* ws) : ws_(ws) {
    bool idle = false;
    if (ws_ && !ws_->busy_.compare_exchange_strong(idle, true, std::memory_order_acquire))
      fail(Errc::invalid_argument, "loftq::Workspace: already in use by another call (use one workspace per thread)");
  }
  ~WorkspaceLease() {
    if (ws_) ws_->busy_.store(false, std::memory_order_release);
  }
  WorkspaceLease(const WorkspaceLease&) = delete;
  WorkspaceLease& operator=(const WorkspaceLease&) = delete;

  // M := a rows x cols matrix, contents unspecified: a spare of the same size
  // when there is one. Otherwise the spares are freed before M is allocated.
  void take(RowMatrix<Scalar>& M, Eigen::Index rows, Eigen::Index cols) {
    if (ws_) {
      auto& spare = ws_->matrices_;
      for (auto it = spare.rbegin(); it != spare.rend(); ++it) {
        if (it->size() != rows * cols) continue;
        M = std::move(*it);
        spare.erase(std::next(it).base());
        M.resize(rows, cols);  // the same size: Eigen keeps the storage
        return;
      }
      std::vector<RowMatrix<Scalar>>().swap(spare);
    }
    resize_large(M, rows, cols);
  }

  // P := make_packed(rows, cols, spec), in the smallest spare code set that
  // holds the codes without growing. Otherwise the spares are freed before P
  // is allocated.
  void take(PackedMatrix& P, Eigen::Index rows, Eigen::Index cols, const QuantSpec& spec) {
    if (ws_) {
      auto& spare = ws_->packed_;
      const std::size_t need = packed_bytes(rows * cols, spec.bits);
      auto pick = spare.end();
      for (auto it = spare.begin(); it != spare.end(); ++it)
        if (it->codes.capacity() >= need && (pick == spare.end() || it->codes.capacity() < pick->codes.capacity()))
          pick = it;
      if (pick != spare.end()) {
        P = std::move(*pick);
        spare.erase(pick);
        reset_packed(P, rows, cols, spec);
        return;
      }
      std::vector<PackedMatrix>().swap(spare);
    }
    P = make_packed(rows, cols, spec);
  }

  // Gives a buffer back for later calls (an empty one is dropped).
  void give(RowMatrix<Scalar>&& M) {
    if (ws_ && M.size() > 0) keep(ws_->matrices_, std::move(M), Workspace<Scalar>::kSpareMatrices);
  }
  void give(PackedMatrix&& P) {
    if (ws_ && P.codes.capacity() > 0) keep(ws_->packed_, std::move(P), Workspace<Scalar>::kSparePacked);
  }

  // The warm scale search's fractions: the workspace's, or `own`.
  std::vector<float>& fractions(std::vector<float>& own) { return ws_ ? ws_->fractions_ : own; }

  bool active() const { return ws_ != nullptr; }

 private:
  template <class T>
  static void keep(std::vector<T>& spare, typename std::vector<T>::value_type&& x, std::size_t cap) {
    if (spare.size() >= cap) spare.erase(spare.begin());
    spare.push_back(std::move(x));
  }

  Workspace<Scalar>* ws_;
};

}  // namespace detail

template <class Scalar>
void Workspace<Scalar>::recycle(Result<Scalar>&& r) {
  detail::WorkspaceLease<Scalar> lease(this);
  lease.give(std::move(r.Q));
  lease.give(std::move(r.packed));
  r = Result<Scalar>{};
}

template <class Scalar>
void Workspace<Scalar>::release() {
  detail::WorkspaceLease<Scalar> lease(this);
  std::vector<RowMatrix<Scalar>>().swap(matrices_);
  std::vector<PackedMatrix>().swap(packed_);
  std::vector<float>().swap(fractions_);
}

template <class Scalar>
std::size_t Workspace<Scalar>::bytes() const {
  std::size_t b = fractions_.capacity() * sizeof(float);
  for (const auto& M : matrices_) b += static_cast<std::size_t>(M.size()) * sizeof(Scalar);
  for (const auto& P : packed_)
    b += P.codes.capacity() + (P.scales.capacity() + P.mins.capacity()) * sizeof(float) + P.ggml_blocks.capacity();
  return b;
}

}  // namespace loftq
