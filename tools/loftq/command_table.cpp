// The commands of the tool, their synopses and the exit status: the top of
// every help text (help.cpp) and the command names the parser accepts.

#include "option_table.hpp"

namespace loftq_cli {

const CommandDef kCommands[4] = {
    {"init", kInit, "loftq init --input W.npy --output DIR [options]",
     "LoftQ-initialize LoRA factors for one weight matrix W (m x n): W ~ Q + A B^T, with Q block-wise quantized and "
     "A (m x r), B (n x r) of rank r. Writes DIR/Q.npy (m x n), DIR/A.npy (m x r), DIR/B.npy (n x r), all float32 C "
     "order, and DIR/report.json (settings, per-iteration errors, timing). PEFT's factors are lora_A = B^T and "
     "lora_B = A (with lora_alpha == r)."},
    {"model", kModel, "loftq model --input PATH --output DIR [options]",
     "LoftQ-initialize every target weight of a safetensors checkpoint (or of a GGUF file for llama.cpp: see "
     "--format gguf). Targets are the 2-D tensors named "
     "<prefix>.<module>.weight with <module> in --target-modules. DIR receives adapter_model.safetensors "
     "(base_model.model.<module path>.lora_A.weight (r x in) and .lora_B.weight (out x r), float32, scaled so that "
     "(lora_alpha / r) * lora_B * lora_A = A B^T), adapter_config.json (PEFT LoraConfig), model.safetensors "
     "(dequantized Q for targets in the input's dtype, every other tensor copied byte for byte; sharded like the "
     "input, with its index, when the input is sharded), with --packed model.packed.safetensors (bit-packed codes "
     "and block scales, see README.md), loftq_report.json (per tensor: shape, bits, rank, error history, QLoRA "
     "baseline error, squared error, bits per weight, seconds; the bit allocation), and the config.json, "
     "generation_config.json and tokenizer files found next to the input."},
    {"merge", kMerge, "loftq merge --input PATH --shards DIR1,DIR2,... --output DIR [--overwrite] [--quiet]",
     "Assemble the outputs of 'loftq model --shard K/N' runs (all N, same settings) and the original checkpoint "
     "PATH into the output an unsharded run writes (identical tensors)."},
    {"calibrate", kCalibrate, "loftq calibrate --input MODEL --tokens TOKENS.npy --output DIR [options]",
     "Run a llama-architecture model (a Hugging Face directory with config.json and safetensors, a GGUF file of "
     "the llama architecture with F32/F16/BF16 or quantized (Q4_0..Q8_0, K-quant, IQ4) weights, or a llama2.c "
     "checkpoint) over calibration token "
     "sequences and record the second moment of every linear layer's input. DIR receives "
     "statistics.safetensors (per module <path>.xtx, the sum of x x^T over the tokens, or its diagonal, float64, "
     "and <path>.tokens; q/k/v and gate/up share one entry), and with --imatrix imatrix.gguf, the same "
     "statistics as a llama.cpp importance matrix. 'loftq model --calibration DIR/statistics.safetensors' then "
     "computes data-aware LoftQ."},
};

extern const char* const kExitStatus;
const char* const kExitStatus =
    "exit status:\n"
    "  0    success\n"
    "  1    bad input or failure: unreadable, malformed or truncated input, a\n"
    "       tensor that is not 2-D or not float, NaN or Inf in W, rank > min(m, n),\n"
    "       unsupported --bits, output path unusable or equal to the input; one\n"
    "       line on stderr and no output is written\n"
    "  2    usage error: unknown command or option, missing --input/--output,\n"
    "       missing, malformed, out-of-range or repeated value (a count of 0,\n"
    "       e.g. --rank 0 or --iters 0, is a usage error)\n"
    "  130  interrupted (SIGINT/SIGTERM/SIGHUP); no output is written\n"
    "\n"
    "Options take their value as '--opt VALUE' or '--opt=VALUE', each at most once.\n"
    "Counts (--rank, --iters, --block-size, --threads) are decimal integers >= 1.\n";

}  // namespace loftq_cli
