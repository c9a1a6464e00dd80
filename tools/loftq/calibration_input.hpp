#pragma once
// `loftq model --calibration FILE`: the statistics each target is computed
// with. FILE is the project's statistics file or a llama.cpp imatrix (GGUF or
// legacy .dat), told apart by its content (loftq/io/calibration.hpp).
//
// Every target is matched before any work: by its Hugging Face module path or
// its llama.cpp name, falling back to the entry of the targets that share its
// input (q/k/v, gate/up). A target without statistics is refused unless
// --calibration-missing data-free, which computes it without them and lists it
// in the report. Statistics are read when their target is computed and kept
// for the next target that shares them, so memory holds two entries at most
// (a full entry of a 7B down projection is 11008^2 doubles, 0.97 GB).

#include "source.hpp"

#include <loftq/input_statistics.hpp>
#include <loftq/io/statistics.hpp>

#include <nlohmann/json.hpp>

#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

namespace loftq_cli {

class CalibrationInput {
 public:
  // Opens FILE; throws InputError naming it when it is not a statistics file.
  CalibrationInput(const std::string& path, bool data_free_fallback, double damping);

  // Before any work: every target has statistics of its width (InputError otherwise).
  void check(const std::vector<ModelTarget>& targets);

  // The statistics of a checked target; null when it falls back to data-free LoftQ.
  const loftq::InputStatistics* of(const ModelTarget& t) const;

  // The damped metrics' lambdas: --calibration-damping for both kinds of
  // statistics, or loftq::DataAwareOptions' defaults.
  loftq::DataAwareOptions data_aware_options() const {
    loftq::DataAwareOptions da;
    if (damping_ >= 0) da.damping = da.diagonal_damping = damping_;
    return da;
  }

  // The report's "calibration": the file, its format and identity, the damping, the fallbacks.
  nlohmann::json describe() const;
  // A target's "calibration" entry: the metric, the tokens, the entry used.
  nlohmann::json target_json(const ModelTarget& t) const;

 private:
  std::string path_;
  loftq::io::StatisticsFile file_;
  bool fallback_;
  double damping_;
  std::string identity_;
  std::map<std::string, std::pair<std::string, bool>> entry_of_;  // target -> (entry, shared)
  std::vector<std::string> fallbacks_;
  // The entries last read, newest last (see above).
  mutable std::vector<std::pair<std::string, loftq::InputStatistics>> cache_;
};

}  // namespace loftq_cli
