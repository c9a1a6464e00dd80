// Every library header and every header of the loftq tool in one translation
// unit, for clang-tidy (.clang-tidy; .ci/run's format stage runs it with the
// flags of the object library loftq_tidy_headers from the build's
// compile_commands.json). Never built by default.
#include <loftq/io/bnb.hpp>
#include <loftq/io/calibration.hpp>
#include <loftq/io/ggml_q5.hpp>
#include <loftq/io/gguf.hpp>
#include <loftq/io/imatrix.hpp>
#include <loftq/io/llama_names.hpp>
#include <loftq/io/npy.hpp>
#include <loftq/io/packed_file.hpp>
#include <loftq/io/peft.hpp>
#include <loftq/io/safetensors.hpp>
#include <loftq/io/statistics.hpp>
#include <loftq/loftq.hpp>

#include "tools/loftq/calibration_input.hpp"
#include "tools/loftq/checkpoint_plan.hpp"
#include "tools/loftq/commands.hpp"
#include "tools/loftq/compute.hpp"
#include "tools/loftq/content_identity.hpp"
#include "tools/loftq/errors.hpp"
#include "tools/loftq/interrupt.hpp"
#include "tools/loftq/model_pipeline.hpp"
#include "tools/loftq/option_checks.hpp"
#include "tools/loftq/option_table.hpp"
#include "tools/loftq/options.hpp"
#include "tools/loftq/path_safety.hpp"
#include "tools/loftq/progress.hpp"
#include "tools/loftq/report.hpp"
#include "tools/loftq/safetensors_output.hpp"
#include "tools/loftq/sink.hpp"
#include "tools/loftq/source.hpp"
#include "tools/loftq/source_gguf.hpp"
#include "tools/loftq/source_safetensors.hpp"
#include "tools/loftq/staged_output.hpp"
#include "tools/loftq/staging_files.hpp"

int main() { return 0; }
