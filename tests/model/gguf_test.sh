#!/usr/bin/env bash
# Tests of `loftq model --format gguf`, one case per CTest test:
#
#   bash gguf_test.sh CASE /path/to/loftq /path/to/gguftool WORKDIR DATA_DIR
#
# WORKDIR is wiped and rebuilt; GGUF inputs are made here by gguftool, which
# also verifies the outputs with its own reader and ggml's decoders.
# Exit 77 (a CTest skip) when a case needs data that is absent.
set -u

# shellcheck source=../support/cli_helpers.sh
source "$(dirname "$0")/../support/cli_helpers.sh"
setup_case "$1" "$2" "$4"
TOOL=$3
DATA=$5

# stories OUT.gguf [f32|f16|bf16], synth ...
# shellcheck source=../support/model_helpers.sh
source "$(dirname "$0")/../support/model_helpers.sh"
synth_big() { "$TOOL" synth_big "$@" || fail "gguftool synth_big $*"; }
verify() { "$TOOL" verify "$@" >/dev/null || fail "verify $*"; }
no_temps() { [ -z "$(find . -name '*.tmp-*' -o -name '.loftq-tmp*')" ] || fail "temporary left behind: $(find . -name '*tmp*')"; }

case "$case_name" in

gguf_stories)
  # stories260K in each float type, each ggml type; ffn_down's rows (172) are
  # not whole blocks: kept as they were, without an adapter (30 targets, 5 kept).
  for dt in f32 f16 bf16; do stories "s_$dt.gguf" "$dt"; done
  sum=$(sha256sum s_*.gguf)
  expect_rc 0 model --input s_f16.gguf --output out --format gguf --rank 8 --iters 3 --lora-alpha 16 --threads 1
  verify s_f16.gguf out iq4_nl 8 3 16 search
  [ "$(ls -A out | LC_ALL=C sort | tr '\n' ' ')" = ".loftq-output adapter.gguf loftq_report.json model.gguf " ] ||
    fail "out/ holds $(ls -A out)"
  grep -q '30 target tensors as iq4_nl' "$out_file" || { show; fail "summary"; }
  [ "$(grep -c 'kept as it was: rows of 172' "$err_file")" -eq 5 ] || { show; fail "no note on the kept ffn_down"; }
  grep -q '"blk.0.ffn_down.weight"' out/loftq_report.json || fail "report: kept_unquantized"
  grep -q '"ggml_type": "IQ4_NL"' out/loftq_report.json || fail "report: ggml_type"
  # What the file stores: 18 bytes per 32 weights, 34 for q8_0 (ggml-common.h).
  [ "$(grep -c '"bits_per_weight": 4.5,' out/loftq_report.json)" -eq 30 ] || fail "report: bits_per_weight"
  grep -q '"average_bits_per_weight": 4.5,' out/loftq_report.json || fail "report: average_bits_per_weight"
  expect_rc 0 model --input s_bf16.gguf --output o_bf --format gguf --quant q4_0 --rank 4 --iters 2 --scale absmax --quiet --threads 1
  verify s_bf16.gguf o_bf q4_0 4 2 4 absmax
  # Deterministic: the same run at 2 threads and at 1, byte for byte.
  expect_rc 0 model --input s_f32.gguf --output o8 --format gguf --quant q8_0 --rank 4 --iters 2 --quiet --threads 2
  [ ! -s "$out_file" ] && [ ! -s "$err_file" ] || { show; fail "--quiet printed something"; }
  verify s_f32.gguf o8 q8_0 4 2 4 search
  [ "$(grep -c '"bits_per_weight": 8.5,' o8/loftq_report.json)" -eq 30 ] || fail "report: q8_0 bits_per_weight"
  expect_rc 0 model --input s_f32.gguf --output o8b --format gguf --quant q8_0 --rank 4 --iters 2 --quiet --threads 1
  cmp -s o8/model.gguf o8b/model.gguf && cmp -s o8/adapter.gguf o8b/adapter.gguf || fail "not deterministic"
  [ "$sum" = "$(sha256sum s_*.gguf)" ] || fail "an input changed"
  no_temps
  ;;

gguf_quantized_input)
  # Inputs as llama.cpp users hold them: stories260K in Q8_0 (ffn_down's rows of 172 stay F16) and the 4-layer
  # model of width 256 in Q4_K (its ffn_down's rows of 288 stay F32), as ggml quantizes. LoftQ starts from the
  # targets dequantized as ggml does; verify decodes them by ggml's rules, checks Q bit for bit against
  # loftq::initialize on those values and the error of Q + adapter against ggml's own q4_0 of them.
  stories s.gguf f16
  "$TOOL" quantize s.gguf s_q8.gguf q8_0 >/dev/null || fail "gguftool quantize q8_0"
  "$TOOL" mix_synth m.gguf || fail "gguftool mix_synth"
  "$TOOL" quantize m.gguf m_q4k.gguf q4_k >/dev/null || fail "gguftool quantize q4_k"
  sum=$(sha256sum s_q8.gguf m_q4k.gguf)
  expect_rc 0 model --input s_q8.gguf --output o8 --format gguf --quant q4_0 --rank 4 --iters 2 --quiet --threads 1
  verify s_q8.gguf o8 q4_0 4 2 4 search
  [ "$(grep -c '"dtype": "Q8_0"' o8/loftq_report.json)" -eq 30 ] || fail "report: the targets' input type Q8_0"
  grep -q '"Q8_0": 30' o8/loftq_report.json || fail "report: target_input_types"
  # Q8_0 is above 4 bits: no warning. Q4_K is not: one line on stderr, the same in the report.
  ! grep -q 'warning' "$err_file" o8/loftq_report.json || fail "a warning for a Q8_0 input"
  expect_rc 0 model --input m_q4k.gguf --output ok --format gguf --quant q4_0 --rank 4 --iters 2 --quiet --threads 2
  verify m_q4k.gguf ok q4_0 4 2 4 search
  [ "$(grep -c '"dtype": "Q4_K"' ok/loftq_report.json)" -eq 24 ] || fail "report: the targets' input type Q4_K"
  [ "$(grep -c '"dtype": "F32"' ok/loftq_report.json)" -eq 4 ] || fail "report: the F32 ffn_down targets"
  want='24 Q4_K target(s) already quantized to 4 bits or fewer'
  [ "$(grep -c 'warning' "$err_file")" -eq 1 ] && grep -q "^loftq: warning: m_q4k.gguf: $want" "$err_file" ||
    { show; fail "stderr: the re-quantization warning"; }
  sed -n '/"warnings": \[/,/\]/p' ok/loftq_report.json | grep -q "m_q4k.gguf: $want" || fail "report: the warning"
  # With a mix the quantized non-targets stay as they are: output.weight, Q6_K in llama.cpp's q4_k_m, is listed.
  expect_rc 0 model --input m_q4k.gguf --output om --format gguf --quant q4_k_m --rank 4 --iters 1 --quiet --threads 2
  sed -n '/"kept_quantized_in_input": {/,/}/p' om/loftq_report.json | grep -q '"output.weight": "Q6_K"' ||
    fail "report: mix.kept_quantized_in_input"
  [ "$sum" = "$(sha256sum s_q8.gguf m_q4k.gguf)" ] || fail "an input changed"
  no_temps
  ;;

gguf_budget)
  # --bits-budget with --format gguf: the 4-layer model of width 256 (ffn_down's rows of 288 take only the 32-element
  # types), each target's ggml type chosen by the exact knapsack over what model.gguf and adapter.gguf store.
  "$TOOL" mix_synth m.gguf || fail "gguftool mix_synth"
  # Two modules keep the cost down: each target is computed in each of its 9 (ffn_down: 3) types.
  targets=(--target-modules attn_q,ffn_down)
  expect_rc 0 model --input m.gguf --output b --format gguf --bits-budget 5.2 --rank 4 --iters 1 --threads 2 \
    "${targets[@]}"
  alloc=$(sed -n '/^  "bits_allocation": {/,/^  },/p' b/loftq_report.json)
  avg=$(printf '%s\n' "$alloc" | sed -n 's/^    "average_bits_per_weight": \([0-9.e+-]*\),*$/\1/p')
  [ -n "$avg" ] && awk -v x="$avg" 'BEGIN { exit !(x <= 5.2 && x > 4.5) }' || { show; fail "average $avg not in (4.5, 5.2]"; }
  # More than one type: the budget lies between the uniform choices.
  [ "$(printf '%s\n' "$alloc" | sed -n '/"tensors_per_type"/,/}/p' | grep -c '": [0-9]')" -ge 2 ] || fail "one type only"
  "$TOOL" verify_budget m.gguf b 5.2 >/dev/null || fail "verify_budget"
  grep -q '"llama_cpp_recipes"' b/loftq_report.json || fail "report: llama_cpp_recipes"
  # Every recipe has LoftQ's error in its types, ffn_down's Q5_0 / Q5_1 fallbacks (types loftq does not write) at
  # ggml's own quantization.
  ! grep -q '"loftq_sq_err_in_its_types": null' b/loftq_report.json &&
    [ "$(grep -c '"loftq_sq_err_in_its_types": [0-9]' b/loftq_report.json)" -ge 5 ] || fail "report: recipe errors"
  grep -q '"tensors_at_ggml_own_quantization": [1-9]' b/loftq_report.json || fail "report: no Q5_0 / Q5_1 tensor"
  grep -q 'bit budget 5.2: ' "$out_file" || { show; fail "summary: the mix"; }
  # The same run at 1 thread, byte for byte.
  expect_rc 0 model --input m.gguf --output b1 --format gguf --bits-budget 5.2 --rank 4 --iters 1 --threads 1 --quiet \
    "${targets[@]}"
  cmp -s b/model.gguf b1/model.gguf && cmp -s b/adapter.gguf b1/adapter.gguf || fail "not deterministic"
  # A budget below the cheapest types with the adapter; --quant with a budget.
  expect_refused '--bits-budget 2.70* is below 3\.[0-9]* bits per weight, the cheapest' model --input m.gguf \
    --output o_low --format gguf --bits-budget 2.7 --rank 4 --quiet
  expect_usage model --input m.gguf --output o_q --format gguf --bits-budget 4 --quant q4_k
  expect_usage model --input m.gguf --output o_b --bits-budget 4.5
  no_temps
  ;;

gguf_synth)
  synth in.gguf
  sum=$(sha256sum in.gguf)
  expect_rc 0 model --input in.gguf --output out --format gguf --rank 4 --iters 2 --quiet --threads 1
  verify in.gguf out iq4_nl 4 2 4 search
  # HF module names select the same tensors; llama.cpp names work as well.
  expect_rc 0 model --input in.gguf --output hf --format gguf --rank 4 --iters 2 --quiet --threads 1 \
    --target-modules q_proj,k_proj,down_proj,up_proj
  cmp -s out/model.gguf hf/model.gguf || fail "HF module names select other tensors"
  expect_rc 0 model --input in.gguf --output only_q --format gguf --rank 4 --iters 2 --target-modules attn_q --threads 1
  grep -q '1 target tensors' "$out_file" || { show; fail "--target-modules attn_q"; }
  for q in q4_0 q8_0; do
    expect_rc 0 model --input in.gguf --output "a_$q" --format gguf --quant "$q" --rank 3 --iters 2 --scale absmax \
      --lora-alpha 7 --quiet --threads 1
    verify in.gguf "a_$q" "$q" 3 2 7 absmax
  done
  # --adapter-type: each stored value within its type's rounding; q8_0's lora_b in f16 unless r is a multiple of 32.
  for at in f32 bf16 q8_0; do
    expect_rc 0 model --input in.gguf --output "t_$at" --format gguf --rank 3 --iters 2 --adapter-type "$at" --quiet \
      --threads 1
    verify in.gguf "t_$at" iq4_nl 3 2 3 search "$at"
  done
  expect_rc 0 model --input in.gguf --output t32 --format gguf --rank 32 --iters 1 --adapter-type q8_0 --quiet --threads 1
  verify in.gguf t32 iq4_nl 32 1 32 search q8_0
  grep -q '"adapter_type": \[$' t32/loftq_report.json && grep -A2 '"adapter_type": \[$' t32/loftq_report.json |
    grep -q '"Q8_0"' || fail "report: adapter_type"
  # The error the rounding adds: 0 in F32, about 2^-9 in F16, 2^-6 in BF16 (relative, of (alpha/r) B A).
  grep -q '"adapter_rounding_rel_err": 0.0,' t_f32/loftq_report.json || fail "report: F32 rounding error"
  for at in f16 bf16 q8_0; do
    d=t_$at
    [ "$at" = f16 ] && d=out  # the default
    e=$(sed -n 's/.*"adapter_rounding_rel_err": \([0-9.eE+-]*\).*/\1/p' "$d/loftq_report.json" | head -1)
    awk -v e="$e" -v t="$at" 'BEGIN { lo = t == "f16" ? 1e-6 : 1e-5; hi = t == "f16" ? 2e-3 : 2e-2; exit !(e > lo && e < hi) }' ||
      fail "report: $at rounding error $e"
  done
  expect_usage model --input in.gguf --output u --adapter-type f16
  expect_usage model --input in.gguf --output u --format gguf --adapter-type q4_0
  [ "$sum" = "$(sha256sum in.gguf)" ] || fail "the input changed"
  no_temps
  ;;

gguf_mix)
  # llama.cpp's mixes: each tensor in the type the rule function gives it, or kept when loftq does not write that type
  # (ffn_down's rows of 288: Q5_0 / Q5_1 in Q4_K_S and Q5_K_M); targets LoftQ'd, token_embd and output quantized
  # plainly, bit for bit the library's.
  "$TOOL" mix_synth m.gguf || fail "gguftool mix_synth"
  for run in q2_k_mix:search q3_k_m:absmax q4_k_s:search q4_k_m:search q5_k_m:absmax; do
    m=${run%:*}
    expect_rc 0 model --input m.gguf --output "o_$m" --format gguf --quant "$m" --scale "${run#*:}" --rank 4 \
      --iters 1 --threads 2
    "$TOOL" verify_mix m.gguf "o_$m" "$m" 4 1 "${run#*:}" >/dev/null || fail "verify_mix $m"
    grep -q "\"name\": \"$m\"" "o_$m/loftq_report.json" || fail "$m: no mix in the report"
  done
  grep -q 'blk.1.ffn_down.weight kept as it was: llama.cpp.s q5_k_m gives it Q5_1, which loftq does not write' \
    "$err_file" || fail "no note on the kept ffn_down"
  # Only the projections named are LoftQ targets; the others are quantized plainly in their mix type.
  expect_rc 0 model --input m.gguf --output o_qv --format gguf --quant q4_k_m --target-modules q_proj,v_proj --rank 4 \
    --iters 1 --threads 1 --quiet
  "$TOOL" verify_mix m.gguf o_qv q4_k_m 4 1 search >/dev/null || fail "verify_mix with two target modules"
  # Any thread count: the same bytes.
  expect_rc 0 model --input m.gguf --output o_t1 --format gguf --quant q4_k_m --rank 4 --iters 1 --threads 1 --quiet
  cmp -s o_t1/model.gguf o_q4_k_m/model.gguf || fail "model.gguf differs between 1 and 2 threads"
  # The rules are ported for dense models other than Falcon.
  "$TOOL" mix_synth falcon.gguf falcon || fail "gguftool mix_synth falcon"
  "$TOOL" mix_synth moe.gguf moe || fail "gguftool mix_synth moe"
  expect_refused 'falcon.gguf: --quant q4_k_m follows .* other than Falcon' model --input falcon.gguf --output o_f \
    --format gguf --quant q4_k_m
  expect_refused 'moe.gguf: --quant q2_k_mix .* 8 experts' model --input moe.gguf --output o_e --format gguf \
    --quant q2_k_mix
  expect_usage model --input m.gguf --output o_u --quant q4_k_m
  expect_usage model --input m.gguf --output o_u --format gguf --quant q4_k_l
  ;;

gguf_bad_input)
  synth ok.gguf
  synth i32.gguf i32target
  synth noarch.gguf noarch
  head -c 100 ok.gguf >trunc.gguf
  head -c "$(($(stat -c %s ok.gguf) - 7))" ok.gguf >short.gguf
  printf 'GGUF\002\000\000\000' >v2.gguf
  head -c 64 /dev/zero >zero.gguf
  : >empty.gguf
  mkdir adir
  expect_refused 'truncated' model --input trunc.gguf --output o --format gguf
  expect_refused 'truncated' model --input short.gguf --output o --format gguf
  expect_refused 'version 2' model --input v2.gguf --output o --format gguf
  expect_refused 'bad magic' model --input zero.gguf --output o --format gguf
  expect_refused 'truncated' model --input empty.gguf --output o --format gguf
  expect_refused 'not a regular file' model --input adir --output o --format gguf
  expect_refused 'cannot open' model --input missing.gguf --output o --format gguf
  expect_refused "i32.gguf: tensor 'blk.0.attn_q.weight' has type I32" model --input i32.gguf --output o --format gguf
  expect_refused 'general.architecture' model --input noarch.gguf --output o --format gguf
  expect_refused 'no target tensors' model --input ok.gguf --output o --format gguf --target-modules lm_head
  expect_refused 'rank 41' model --input ok.gguf --output o --format gguf --rank 41
  expect_usage model --input ok.gguf --output o --format gguf --quant q5_0
  expect_usage model --input ok.gguf --output o --quant q4_0
  expect_usage model --input ok.gguf --output o --format gguf --bits 4
  expect_usage model --input ok.gguf --output o --format gguf --packed
  expect_usage model --input ok.gguf --output o --format gguf --shard 1/2
  expect_usage model --input ok.gguf --output o --format gguf --double-quant
  # fuzz_gguf's quantized seeds: NaN / Inf fp16 scales, super-blocks cut short, rows not whole super-blocks. A
  # requantization warning may come first; the last line is the error naming the input, and nothing is written.
  for seed in q4_0_nan_scale:NaN q4_0_inf_scale:non-finite q4_k_nan_dmin:NaN q4_0_short:truncated \
    q4_k_truncated:truncated q4_k_row_100:'not a multiple of the Q4_K block'; do
    cp "$(dirname "$0")/../fuzz/corpus/gguf/${seed%%:*}.gguf" . || fail "copy ${seed%%:*}"
    expect_rc 1 model --input "${seed%%:*}.gguf" --output o --format gguf --quant q4_0 --rank 2 --iters 1
    tail -n 1 "$err_file" | grep -q "^loftq: error: ${seed%%:*}.gguf: .*${seed#*:}" || { show; fail "${seed%%:*}"; }
    [ ! -e o ] || fail "${seed%%:*}: an output was written"
  done
  ;;

gguf_header_limit)
  # Inputs the GGUF reader accepts whose outputs it would refuse: exactly its
  # limit of 65536 key-value pairs (model.gguf adds three), and a target named
  # with the 63 bytes a name may have (the adapter's .lora_a lengthens it).
  # Refused before anything is staged, naming the input; a written header
  # equals the size the check computes (test_gguf).
  "$TOOL" synth_limit kvs.gguf kvs || fail "gguftool synth_limit kvs"
  "$TOOL" synth_limit name.gguf name || fail "gguftool synth_limit name"
  expect_refused '^loftq: error: kvs.gguf: the model.gguf .* 65539 key-value pairs .*limit is 65536' \
    model --input kvs.gguf --output o --format gguf --rank 4 --iters 1
  expect_refused "^loftq: error: name.gguf: the adapter.gguf .* tensor named '.*attn_q.weight.lora_a' of 70 bytes" \
    model --input name.gguf --output o --format gguf --rank 4 --iters 1
  # At the limit, not over it: three pairs fewer go through, and the reader
  # takes the output's 65536 pairs: it runs again as an input (the three
  # pairs loftq writes are replaced there, not added).
  "$TOOL" synth_limit fit.gguf kvs_fit || fail "gguftool synth_limit kvs_fit"
  expect_rc 0 model --input fit.gguf --output o --format gguf --rank 4 --iters 1 --quiet
  expect_rc 0 model --input o/model.gguf --output o2 --format gguf --rank 4 --iters 1 --quiet
  [ -f o2/model.gguf ] && [ -f o2/adapter.gguf ] || fail "o/model.gguf as an input: no output"
  ;;

gguf_safety)
  synth in.gguf
  sum=$(sha256sum in.gguf)
  expect_rc 0 model --input in.gguf --output out --format gguf --rank 4 --iters 2 --quiet --threads 1
  # An existing DIR is refused unless --overwrite; the input may not be inside DIR or be DIR.
  expect_refused 'exists' model --input in.gguf --output out --format gguf --quiet --threads 1
  expect_rc 0 model --input in.gguf --output out --format gguf --quant q8_0 --rank 4 --iters 2 --quiet --threads 1 --overwrite
  verify in.gguf out q8_0 4 2 4 search
  expect_refused '.' model --input in.gguf --output in.gguf --format gguf --overwrite
  mkdir d && cp in.gguf d/in.gguf
  expect_refused '.' model --input d/in.gguf --output d --format gguf --overwrite
  # SIGTERM inside a tensor: the library stops within a step; nothing is left.
  "$LOFTQ" model --input in.gguf --output sig --format gguf --rank 4 --iters 100000 --threads 1 >"$out_file" 2>"$err_file" &
  pid=$!
  wait_for 'sig.tmp-*'
  sleep 0.2
  kill -s TERM "$pid"
  wait "$pid"
  rc=$?
  [ "$rc" -eq 130 ] || { show; fail "exit status $rc after SIGTERM, expected 130"; }
  [ ! -e sig ] || fail "sig/ exists after SIGTERM"
  [ "$sum" = "$(sha256sum in.gguf)" ] && cmp -s in.gguf d/in.gguf || fail "an input changed"
  no_temps
  ;;

gguf_signal_copy)
  # SIGTERM while a large tensor that is not a target is copied (4 GiB of
  # zeros, a hole in the input): exit 130 within 1 s, nothing left behind.
  # The copy is seen in progress by the staged bytes on disk.
  synth_big big.gguf 4096
  "$LOFTQ" model --input big.gguf --output out --format gguf --rank 4 --iters 1 --quiet --threads 1 \
    >"$out_file" 2>"$err_file" &
  pid=$!
  kb=0
  for _ in $(seq 1500); do
    kb=$(du -sk out.tmp-* 2>/dev/null | awk '{s += $1} END {print s + 0}')
    [ "$kb" -ge 65536 ] && break
    sleep 0.01
  done
  [ "$kb" -ge 65536 ] || { kill -KILL "$pid"; fail "no copy in progress after 15 s ($kb KiB staged)"; }
  t0=$(date +%s%N)
  kill -TERM "$pid"
  wait "$pid"
  rc=$?
  ms=$(( ($(date +%s%N) - t0) / 1000000 ))
  [ "$rc" -eq 130 ] || { show; fail "SIGTERM during the copy: exit $rc, expected 130"; }
  [ "$ms" -lt 1000 ] || fail "SIGTERM during the copy took $ms ms"
  [ "$(ls -A)" = "big.gguf" ] || fail "left behind: $(ls -A)"
  echo "acted on in $ms ms, $kb KiB staged at the signal"
  ;;

gguf_calibration)
  # loftq calibrate on stories260K, from its llama2.c checkpoint and from its
  # GGUF: the same statistics file, byte for byte. Then data-aware LoftQ from
  # the full statistics and from the imatrix: lower output error than
  # data-free LoftQ, and QLoRA above both.
  [ -e "$DATA/stories260K.bin" ] || exit 77
  stories s.gguf f32
  tokens tok.npy 8 32 7 512
  sum=$(sha256sum s.gguf tok.npy)
  expect_rc 0 calibrate --input "$DATA/stories260K.bin" --tokens tok.npy --output st --imatrix --threads 2
  grep -q '8 sequences, 256 tokens' "$out_file" || { show; fail "calibrate summary"; }
  [ "$(ls -A st | LC_ALL=C sort | tr '\n' ' ')" = ".loftq-output imatrix.gguf statistics.safetensors " ] ||
    fail "st/ holds $(ls -A st)"
  expect_rc 0 calibrate --input s.gguf --tokens tok.npy --output st1 --threads 1 --quiet
  cmp -s st/statistics.safetensors st1/statistics.safetensors || fail "GGUF and llama2.c statistics differ"
  expect_rc 0 model --input s.gguf --output full --format gguf --quant q4_0 --rank 8 --iters 3 --threads 2 \
    --calibration st/statistics.safetensors
  read -r ql fr aw < <(sed -n 's/.*QLoRA \([0-9.]*\), LoftQ \([0-9.]*\), data-aware LoftQ \([0-9.]*\)$/\1 \2 \3/p' "$out_file")
  [ -n "${aw:-}" ] || { show; fail "no output-error line"; }
  awk -v q="$ql" -v f="$fr" -v a="$aw" 'BEGIN { exit !(a < f && f < q) }' || fail "full: $aw / $fr / $ql"
  grep -q '"metric": "full"' full/loftq_report.json && grep -q '"identity"' full/loftq_report.json ||
    fail "report: calibration"
  expect_rc 0 model --input s.gguf --output diag --format gguf --quant q4_0 --rank 8 --iters 3 --threads 2 \
    --calibration st/imatrix.gguf
  grep -q '"metric": "diagonal"' diag/loftq_report.json || fail "report: imatrix metric"
  # --bits-budget with the imatrix: the files within the budget and no uniform type better (verify_budget), each
  # candidate measured in the data-aware metric, so other errors than the data-free run's.
  for c in "--calibration st/imatrix.gguf" ""; do
    # shellcheck disable=SC2086
    expect_rc 0 model --input s.gguf --output "bud${c:+_c}" --format gguf --bits-budget 9.5 --rank 8 --iters 1 \
      --threads 2 --quiet $c
    "$TOOL" verify_budget s.gguf "bud${c:+_c}" 9.5 >/dev/null || fail "verify_budget ${c:-without --calibration}"
  done
  grep -q '"metric": "diagonal"' bud_c/loftq_report.json || fail "report: the budget run's metric"
  cands() { sed -n '/"candidate_sq_err"/,/^    },/p' "$1/loftq_report.json"; }
  [ -n "$(cands bud)" ] && [ "$(cands bud)" != "$(cands bud_c)" ] || fail "the same candidate errors with the imatrix"
  # Refused with one line and nothing written: a model file as statistics,
  # token ids outside the vocabulary, a truncated statistics file; usage: exit 2.
  expect_rc 1 model --input s.gguf --output bad1 --format gguf --calibration s.gguf
  tokens big.npy 2 8 3 600
  expect_rc 1 calibrate --input s.gguf --tokens big.npy --output bad2
  head -c 3000 st/statistics.safetensors > cut.safetensors
  expect_rc 1 model --input s.gguf --output bad3 --format gguf --calibration cut.safetensors
  expect_rc 2 model --input s.gguf --output bad4 --format gguf --calibration-missing data-free
  [ ! -e bad1 ] && [ ! -e bad2 ] && [ ! -e bad3 ] && [ ! -e bad4 ] || fail "output written on failure"
  [ "$sum" = "$(sha256sum s.gguf tok.npy)" ] || fail "an input changed"
  no_temps
  ;;

*)
  echo "unknown case $case_name" >&2
  exit 2
  ;;
esac
echo "PASS [$case_name]"
