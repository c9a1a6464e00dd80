#include <doctest/doctest.h>

#include <loftq/initialize.hpp>

#include "support.hpp"

TEST_CASE("real weights: LoftQ beats QLoRA init on all 36 stories260K matrices at NF4 and NF2") {
  const auto mats = loftq_test::stories260k();
  if (mats.empty()) {
    MESSAGE("SKIPPED: " << loftq_test::shared_data("stories260K.bin") << " is absent");
    return;
  }
  REQUIRE(mats.size() == 36);
  loftq::Options o;
  o.rank = 8;
  o.iterations = 5;
  for (const auto& nm : mats) {
    INFO(nm.name);
    const auto r4 = loftq::initialize(nm.W, loftq::NormalFloat<4>{}, o);
    const auto q4 = loftq::qlora_init(nm.W, loftq::NormalFloat<4>{}, o);
    CHECK(r4.error() < q4.error());
    const auto r2 = loftq::initialize(nm.W, loftq::NormalFloat<2>{}, o);
    const auto q2 = loftq::qlora_init(nm.W, loftq::NormalFloat<2>{}, o);
    CHECK(r2.error() < q2.error());
    CHECK(q4.error() < q2.error());
  }
}

TEST_CASE("real weights: the defaults beat the reference LoftQ by >= 20% at NF2 and >= 10% at NF4") {
  const auto mats = loftq_test::stories260k();
  if (mats.empty()) {
    MESSAGE("SKIPPED: " << loftq_test::shared_data("stories260K.bin") << " is absent");
    return;
  }
  loftq::Options ours;  // scale search, SVD start, best iterate
  ours.rank = 8;
  loftq::Options ref = ours;  // PEFT's LoftQ: absmax, zero start, last iterate
  ref.scale_search = false;
  ref.start = loftq::Start::zero;
  ref.keep_best = false;
  double ours2 = 0, ref2 = 0, ours4 = 0, ref4 = 0;
  for (const auto& nm : mats) {
    ours2 += loftq::initialize(nm.W, loftq::NormalFloat<2>{}, ours).error();
    ref2 += loftq::initialize(nm.W, loftq::NormalFloat<2>{}, ref).error();
    ours4 += loftq::initialize(nm.W, loftq::NormalFloat<4>{}, ours).error();
    ref4 += loftq::initialize(nm.W, loftq::NormalFloat<4>{}, ref).error();
  }
  // Mean relative error over the 36 matrices; measured 0.553x (NF2) and 0.734x (NF4).
  MESSAGE("NF2 " << ours2 / ref2 << "x, NF4 " << ours4 / ref4 << "x the reference's mean error");
  CHECK(ours2 <= 0.8 * ref2);
  CHECK(ours4 <= 0.9 * ref4);
}
