#!/usr/bin/env bash
# llama.cpp itself on `loftq model --format gguf` outputs (the prebuilt
# libraries of @node-llama-cpp/linux-x64, see llama_check.cpp):
#
#   bash engine_test.sh /path/to/loftq /path/to/gguftool /path/to/llama_check WORKDIR DATA_DIR
#
# stories260K as an F32 GGUF reproduces the reference logits in llama.cpp;
# for q4_0, q8_0 and iq4_nl (and q4_0 with an F16 adapter), llama.cpp loads
# model.gguf with adapter.gguf and the KL to the F32 model is lowest at
# adapter scale 1.0 and at most half of ggml's own quantization's. Exit 77 (a CTest skip) without the data or the
# libraries.
set -u

# shellcheck source=../support/cli_helpers.sh
source "$(dirname "$0")/../support/cli_helpers.sh"
setup_case engine "$1" "$4"
TOOL=$2
CHECK=$3
DATA=$5

"$TOOL" stories "$DATA/stories260K.bin" s.gguf f32
s=$?
[ $s -eq 77 ] && exit 77
[ $s -eq 0 ] || fail "gguftool stories"
"$CHECK" logits s.gguf "$DATA/stories260K_logits_tokens.npy" "$DATA/stories260K_logits.npy" 1e-3
s=$?
[ $s -eq 77 ] && exit 77
[ $s -eq 0 ] || fail "llama.cpp's logits of the F32 conversion"
# An F16 adapter too (--adapter-type): llama.cpp applies it the same way.
for run in q4_0:f32 q8_0:f32 iq4_nl:f32 q4_0:f16; do
  q=${run%:*}
  at=${run#*:}
  expect_rc 0 model --input s.gguf --output "o_$q$at" --format gguf --quant "$q" --adapter-type "$at" --rank 8 \
    --quiet --threads 1
  mkdir "w_$q$at" || fail "mkdir"
  "$CHECK" adapter s.gguf "o_$q$at" "$q" "w_$q$at" || fail "llama.cpp on the $q outputs, adapter in $at"
done
