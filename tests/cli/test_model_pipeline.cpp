// TensorPrefetcher (tools/loftq/model_pipeline.hpp): every target's weights
// arrive intact and in order whatever the resident bound, and the bound
// decides which targets are read while the consumer still holds the previous
// one, and when a read waits for a result to be released.

#include <doctest/doctest.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <mutex>
#include <thread>
#include <vector>

#include "model_pipeline.hpp"

namespace {

using loftq_cli::ModelTarget;
using loftq_cli::ResidentBound;
using loftq_cli::TensorPrefetcher;

float value_of(std::size_t target, std::uint64_t i) {
  return static_cast<float>(target + 1) * 0.5f + static_cast<float>(i % 97) * 0.25f - 3.0f;
}

// Targets of the given shapes; read() fills W with value_of and records, per
// target, how many results the consumer had released when its read began.
class FakeSource : public loftq_cli::Source {
 public:
  explicit FakeSource(const std::vector<std::pair<std::uint64_t, std::uint64_t>>& shapes) {
    for (std::size_t k = 0; k < shapes.size(); ++k) {
      ModelTarget t;
      t.name = "t" + std::to_string(k);
      t.rows = shapes[k].first;
      t.cols = shapes[k].second;
      t.index = k;
      targets_.push_back(t);
    }
  }
  std::vector<std::string> input_files() const override { return {}; }
  void plan(const loftq_cli::Args&) override {}
  std::vector<loftq_cli::Step> steps() const override { return {}; }
  void read(const ModelTarget& t, float* W) const override {
    {
      std::lock_guard<std::mutex> lk(m_);
      released_at_read_.push_back(released.load());
      ++reads;
    }
    for (std::uint64_t i = 0; i < t.rows * t.cols; ++i) W[i] = value_of(t.index, i);
  }
  void copy(std::size_t, const loftq_cli::CopyOut&) const override {}
  void describe(nlohmann::json&) const override {}
  std::string summary_count() const override { return ""; }

  std::vector<const ModelTarget*> order() const {
    std::vector<const ModelTarget*> o;
    for (const ModelTarget& t : targets_) o.push_back(&t);
    return o;
  }
  std::vector<int> released_at_read() const {
    std::lock_guard<std::mutex> lk(m_);
    return released_at_read_;
  }

  std::atomic<int> released{0};
  mutable std::atomic<int> reads{0};

 private:
  mutable std::mutex m_;
  mutable std::vector<int> released_at_read_;
};

// Takes every target, checks its weights and w2 against a sum written here,
// holds it for `hold`, then releases it.
void consume_all(FakeSource& src, TensorPrefetcher& p, std::chrono::milliseconds hold) {
  for (const ModelTarget* t : src.order()) {
    const TensorPrefetcher::Loaded in = p.next();
    REQUIRE(in.target == t);
    REQUIRE(in.W.rows() == static_cast<Eigen::Index>(t->rows));
    REQUIRE(in.W.cols() == static_cast<Eigen::Index>(t->cols));
    double w2 = 0;
    bool same = true;
    for (std::uint64_t i = 0; i < t->rows * t->cols; ++i) {
      const float w = in.W.data()[i];
      same = same && w == value_of(t->index, i);
      w2 += static_cast<double>(w) * static_cast<double>(w);
    }
    CHECK(same);
    CHECK(std::abs(in.w2 - w2) <= 1e-12 * w2);
    std::this_thread::sleep_for(hold);
    ++src.released;  // before release(), so a read it lets start sees the count
    p.release(*t);
  }
}

constexpr std::uint64_t kBytes = sizeof(float);

}  // namespace

TEST_CASE("every target arrives intact and in order, whatever the bound") {
  const std::vector<std::pair<std::uint64_t, std::uint64_t>> shapes = {{64, 48}, {8, 8}, {64, 48}, {3, 5}, {40, 40}};
  for (const std::uint64_t bound :
       {std::uint64_t(1), std::uint64_t(64 * 48 * 3 * kBytes), std::numeric_limits<std::uint64_t>::max()}) {
    CAPTURE(bound);
    FakeSource src(shapes);
    TensorPrefetcher p(src, src.order(), ResidentBound{bound, 1.0});
    consume_all(src, p, std::chrono::milliseconds(1));
    CHECK(src.reads.load() == static_cast<int>(shapes.size()));
  }
}

TEST_CASE("a bound below one target's bytes reads each target only after the previous one is released") {
  FakeSource src({{32, 32}, {32, 32}, {4, 4}, {32, 32}});
  TensorPrefetcher p(src, src.order(), ResidentBound{1, 1.0});
  // Holding each target gives a prefetcher that ignored the bound time to read the next one.
  consume_all(src, p, std::chrono::milliseconds(30));
  CHECK(p.read_ahead() == 0);
  const std::vector<int> at = src.released_at_read();
  REQUIRE(at.size() == 4);
  for (int k = 0; k < 4; ++k) CHECK(at[static_cast<std::size_t>(k)] == k);
}

TEST_CASE("without a bound the next target is read while the current one is held") {
  FakeSource src({{32, 32}, {32, 32}, {32, 32}});
  TensorPrefetcher p(src, src.order());
  const TensorPrefetcher::Loaded first = p.next();
  const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (src.reads.load() < 2 && std::chrono::steady_clock::now() < until)
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  CHECK(src.reads.load() == 2);  // target 1, not yet target 2: one ahead
  CHECK(first.W(0, 0) == value_of(0, 0));
  p.release(*first.target);
  p.next();
  while (src.reads.load() < 3 && std::chrono::steady_clock::now() < until)
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  p.next();
  CHECK(p.read_ahead() == 2);
}

TEST_CASE("a bound reads a small target ahead and makes a large one wait for the release") {
  // Large L = 32x32 floats, small s = 4x4; the results hold as much as the weights (work 1).
  // Bound 2L + s: while L0 is computed (L0 and its result, 2L) the small target fits beside
  // it; L2 fits only once L0's result is released, with s1 and its result held.
  const std::uint64_t L = 32 * 32 * kBytes, s = 4 * 4 * kBytes;
  FakeSource src({{32, 32}, {4, 4}, {32, 32}});
  TensorPrefetcher p(src, src.order(), ResidentBound{2 * L + s, 1.0});
  const TensorPrefetcher::Loaded l0 = p.next();
  const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (src.reads.load() < 2 && std::chrono::steady_clock::now() < until)
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  CHECK(src.reads.load() == 2);                  // s1 read while L0 is held
  const TensorPrefetcher::Loaded s1 = p.next();  // L0's result not released yet (a slow writer)
  CHECK(s1.W(0, 0) == value_of(1, 0));
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  CHECK(src.reads.load() == 2);  // L2 waits: s1 + its result + L0's result + L2 > bound
  ++src.released;
  p.release(*l0.target);
  while (src.reads.load() < 3 && std::chrono::steady_clock::now() < until)
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  CHECK(src.reads.load() == 3);  // read ahead, while s1 is still held
  const TensorPrefetcher::Loaded l2 = p.next();
  CHECK(l2.W(31, 31) == value_of(2, 32 * 32 - 1));
  CHECK(p.read_ahead() == 2);
  const std::vector<int> at = src.released_at_read();
  REQUIRE(at.size() == 3);
  CHECK(at[1] == 0);
  CHECK(at[2] == 1);
}

TEST_CASE("nothing is read beyond the first target before the consumer takes it") {
  // next() may free the other buffer while it admits a target: a second target read into it
  // before the first is taken would be lost. Bound 2L + 1: L0 and its result fit, L1 beside them not.
  const std::uint64_t L = 32 * 32 * kBytes;
  FakeSource src({{32, 32}, {32, 32}});
  TensorPrefetcher p(src, src.order(), ResidentBound{2 * L + 1, 1.0});
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  CHECK(src.reads.load() == 1);
  consume_all(src, p, std::chrono::milliseconds(1));
  CHECK(src.released_at_read() == std::vector<int>{0, 1});
}
