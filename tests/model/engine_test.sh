#!/usr/bin/env bash
# llama.cpp itself on `loftq model --format gguf` outputs (the prebuilt
# libraries of @node-llama-cpp/linux-x64, see llama_check.cpp), one case per
# CTest test:
#
#   bash engine_test.sh CASE /path/to/loftq /path/to/gguftool /path/to/llama_check WORKDIR DATA_DIR
#
#   stories  stories260K as an F32 GGUF reproduces the reference logits in
#            llama.cpp; for q4_0, q8_0 and iq4_nl (and q4_0 with an F16
#            adapter), llama.cpp loads model.gguf with adapter.gguf and the KL
#            to the F32 model is lowest at adapter scale 1.0 and at most half
#            of ggml's own quantization's.
#   kquants  the same for q2_k, q3_k and q4_k on a 256-wide model made by
#            llama_check synth (stories260K's rows are too short for them);
#   kquants_wide  and for q5_k, q6_k and iq4_xs.
#   mix      llama.cpp's quantization mixes (q2_k_mix, q3_k_m, q4_k_s, q4_k_m,
#            q5_k_m): llama_model_quantize gives every tensor of an 8-layer
#            model (dense with tied embeddings, and with n_head / n_head_kv = 4)
#            the type the tool's rule function gives it, and model.gguf holds
#            llama.cpp's types, token_embd and output (no adapter, --scale
#            absmax) byte for byte llama.cpp's (llama_check mix).
#
# Exit 77 (a CTest skip) without the data or the libraries.
set -u

# shellcheck source=../support/cli_helpers.sh
source "$(dirname "$0")/../support/cli_helpers.sh"
setup_case "$1" "$2" "$5"
TOOL=$3
CHECK=$4
DATA=$6

adapter() {  # INPUT QUANT ADAPTER_TYPE RANK THREADS
  local o="o_$2$3"
  expect_rc 0 model --input "$1" --output "$o" --format gguf --quant "$2" --adapter-type "$3" --rank "$4" --quiet \
    --threads "$5"
  mkdir "w_$2$3" || fail "mkdir"
  "$CHECK" adapter "$1" "$o" "$2" "w_$2$3"
  local s=$?
  [ $s -eq 77 ] && exit 77
  [ $s -eq 0 ] || fail "llama.cpp on the $2 outputs, adapter in $3"
}

case "$case_name" in

engine_stories)
  "$TOOL" stories "$DATA/stories260K.bin" s.gguf f32
  s=$?
  [ $s -eq 77 ] && exit 77
  [ $s -eq 0 ] || fail "gguftool stories"
  "$CHECK" logits s.gguf "$DATA/stories260K_logits_tokens.npy" "$DATA/stories260K_logits.npy" 1e-3
  s=$?
  [ $s -eq 77 ] && exit 77
  [ $s -eq 0 ] || fail "llama.cpp's logits of the F32 conversion"
  # An F16 adapter too (--adapter-type): llama.cpp applies it the same way.
  for run in q4_0:f32 q8_0:f32 iq4_nl:f32 q4_0:f16; do adapter s.gguf "${run%:*}" "${run#*:}" 8 1; done
  ;;

engine_kquants)
  "$CHECK" synth synth.gguf || fail "llama_check synth"
  for q in q2_k q3_k q4_k; do adapter synth.gguf "$q" f32 16 2; done
  ;;

engine_kquants_wide)
  "$CHECK" synth synth.gguf || fail "llama_check synth"
  for q in q5_k q6_k iq4_xs; do adapter synth.gguf "$q" f32 16 2; done
  ;;

engine_mix)
  "$CHECK" mix_synth gqa.gguf 8 8 2 untied || fail "llama_check mix_synth gqa"
  "$CHECK" mix_synth tied.gguf 8 4 4 tied || fail "llama_check mix_synth tied"
  mkdir w_tied w_gqa || fail "mkdir"
  for m in q2_k_mix q3_k_m q4_k_s q4_k_m q5_k_m; do
    "$CHECK" mix tied.gguf "$m" w_tied
    s=$?
    [ $s -eq 77 ] && exit 77
    [ $s -eq 0 ] || fail "llama.cpp's $m types of the tied model"
    expect_rc 0 model --input gqa.gguf --output "o_$m" --format gguf --quant "$m" --scale absmax --rank 8 --iters 2 \
      --quiet --threads 2
    "$CHECK" mix gqa.gguf "$m" w_gqa "o_$m" || fail "llama.cpp's $m types against model.gguf's"
  done
  ;;

*)
  fail "unknown case $case_name"
  ;;
esac
