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
