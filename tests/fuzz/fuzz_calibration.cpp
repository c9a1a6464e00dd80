// libFuzzer target: read_calibration (include/loftq/io/calibration.hpp) on
// arbitrary bytes, whichever of the three formats they resemble. Each input
// is written to one private temp file first. Contract: reading is safe on
// any bytes and every failure is a loftq::Error; in a file that reads, every
// entry is found by its own name with its features, every share resolves to
// an entry and says so, every refused entry is Errc::unsupported, and an
// entry's statistics either fail with a loftq::Error (a project file's
// values are checked when loaded) or have its features and count and a
// finite, non-negative diagonal.
#include <loftq/io/calibration.hpp>

#include <cstdint>
#include <cstdlib>
#include <string>

#include "scratch_file.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  namespace lio = loftq::io;
  const std::string& path = write_scratch_file(data, size);
  lio::StatisticsFile f;
  try {
    f = lio::read_calibration(path);
  } catch (const loftq::Error&) {
    return 0;
  }
  if (f.format() != lio::detect_calibration_format(path) || f.entries().empty()) std::abort();
  for (const auto& e : f.entries()) {
    const lio::StatisticsFile::Match m = f.lookup(e.first);
    if (m.entry != &e.second || m.shared || e.second.features < 1 || e.second.count < 1) std::abort();
    if (&f.check(e.first, e.second.features) != &e.second) std::abort();
    try {
      const loftq::InputStatistics s = f.statistics(e.first);
      if (s.features() != e.second.features || s.count() != e.second.count || s.mode() != e.second.mode) std::abort();
      const Eigen::VectorXd d = s.diagonal();
      if (!d.allFinite() || (d.array() < 0).any()) std::abort();
    } catch (const loftq::Error&) {
      if (f.format() != lio::CalibrationFormat::loftq) std::abort();  // imatrix values are checked at read
    }
  }
  for (const auto& s : f.shares()) {
    const lio::StatisticsFile::Match m = f.lookup(s.first);
    if (!m.entry || !m.shared || m.entry->name != s.second) std::abort();
  }
  for (const auto& r : f.refused()) {
    try {
      f.lookup(r.first);
      std::abort();
    } catch (const loftq::Error& e) {
      if (e.code() != loftq::Errc::unsupported) std::abort();
    }
  }
  return 0;
}
