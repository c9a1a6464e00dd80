#!/usr/bin/env bash
# Tests of `loftq model` and `loftq merge`, one case per CTest test:
#
#   bash model_test.sh CASE /path/to/loftq /path/to/modeltool WORKDIR DATA_DIR
#
# WORKDIR is wiped and rebuilt; checkpoints are made here by modeltool.
# Exit 77 (a CTest skip) when a case needs data that is absent.
set -u

# shellcheck source=../support/cli_helpers.sh
source "$(dirname "$0")/../support/cli_helpers.sh"
setup_script model "$@"

case "$case_name" in

stories)
  # llama2.c's stories260K converted to HF names, then the whole checkpoint.
  stories ck
  expect_rc 0 model --input ck --output out --rank 8 --iters 3 --lora-alpha 16 --seed 1
  check ck out 8 16
  [ "$(ls out | LC_ALL=C sort | tr '\n' ' ')" = "adapter_config.json adapter_model.safetensors config.json loftq_report.json model.safetensors " ] ||
    fail "out/ holds $(ls out)"
  grep -q '"task_type": "CAUSAL_LM"' out/adapter_config.json || fail "task_type"
  grep -q '"base_model_name_or_path": "karpathy/tinyllamas-stories260K"' out/adapter_config.json || fail "base_model_name_or_path"
  grep -q '"peft_type": "LORA"' out/adapter_config.json || fail "peft_type"
  grep -q '35 of 35 target tensors' "$out_file" || { show; fail "summary"; }
  grep -q '\[35/35\]' "$err_file" || { show; fail "no progress on stderr"; }
  cmp -s ck/config.json out/config.json || fail "config.json not copied"
  [ -z "$(ls -d out.* 2>/dev/null)" ] || fail "temporary left behind"
  # 2 bits, a single file as input, --quiet: nothing printed.
  expect_rc 0 model --input ck/model.safetensors --output out2 --bits 2 --rank 4 --iters 2 --quiet
  [ ! -s "$out_file" ] && [ ! -s "$err_file" ] || { show; fail "--quiet printed something"; }
  check ck out2 4 4
  ;;

packed)
  stories ck
  for b in 2 4; do
    expect_rc 0 model --input ck --output "p$b" --bits "$b" --rank 4 --iters 2 --packed --quiet
    [ -f "p$b/model.packed.safetensors" ] || fail "no model.packed.safetensors"
    "$TOOL" packed "p$b" || fail "packed codes at $b bits"
  done
  expect_rc 0 model --input ck --output p3 --bits 3 --block-size 32 --quantizer uniform --rank 4 --iters 2 --packed --quiet
  "$TOOL" packed p3 || fail "packed codes, uniform 3 bits"
  ;;

dtypes)
  # F16 and BF16 inputs: Q keeps the dtype, the check holds.
  for dt in F32 F16 BF16; do
    synth "s$dt" "$dt" 1 2 64 96
    expect_rc 0 model --input "s$dt" --output "o$dt" --rank 8 --iters 2 --quiet
    check "s$dt" "o$dt" 8 8
  done
  # target selection: only q_proj and v_proj, alpha 32.
  expect_rc 0 model --input sF16 --output sel --rank 4 --iters 2 --target-modules q_proj,v_proj,nonexistent --lora-alpha 32 --quiet
  grep -q '"q_proj"' sel/adapter_config.json && grep -q '"v_proj"' sel/adapter_config.json || fail "target_modules"
  ! grep -q 'nonexistent' sel/adapter_config.json || fail "unmatched module listed in target_modules"
  n=$(grep -c '"module":' sel/loftq_report.json)
  [ "$n" -eq 4 ] || fail "expected 4 targets, report has $n"
  ;;

sharded_input)
  synth sh BF16 3 3 64 96
  expect_rc 0 model --input sh --output out --rank 8 --iters 2 --quiet
  check sh out 8 8
  for f in model-00001-of-00003.safetensors model-00002-of-00003.safetensors model-00003-of-00003.safetensors \
           model.safetensors.index.json; do
    [ -f "out/$f" ] || fail "out/$f missing"
  done
  [ ! -e out/model.safetensors ] || fail "unexpected out/model.safetensors"
  ;;

calibration)
  # model --calibration on stories260K's Hugging Face checkpoint, with the
  # statistics of `loftq calibrate`: sharded and merged equals the unsharded
  # run byte for byte; shards of other statistics are not merged; a bit budget
  # allocates by output error.
  stories ck
  tokens tok.npy 8 32 5 512
  expect_rc 0 calibrate --input "$DATA/stories260K.bin" --tokens tok.npy --output st --imatrix --quiet
  expect_rc 0 model --input ck --output full --rank 8 --iters 2 --quiet --calibration st/statistics.safetensors
  grep -q '"loftq_data_aware"' full/loftq_report.json || fail "report: output errors"
  for k in 1 2; do
    expect_rc 0 model --input ck --output "p$k" --rank 8 --iters 2 --quiet --shard "$k/2" \
      --calibration st/statistics.safetensors
  done
  expect_rc 0 merge --input ck --shards p1,p2 --output merged --quiet
  same_outputs full merged
  expect_rc 0 model --input ck --output q2 --rank 8 --iters 2 --quiet --shard 2/2 --calibration st/imatrix.gguf
  expect_bad_input merge --input ck --shards p1,q2 --output m1
  grep -q "other calibration statistics" "$err_file" || fail "no calibration message: $(cat "$err_file")"
  # Another damping is another metric: a different model, and not merged with the others.
  expect_rc 0 model --input ck --output d2 --rank 8 --iters 2 --quiet --shard 2/2 \
    --calibration st/statistics.safetensors --calibration-damping 1
  grep -q '"full": 1' d2/loftq_report.json || fail "report: damping"
  cmp -s p2/adapter_model.safetensors d2/adapter_model.safetensors && fail "--calibration-damping changed nothing"
  expect_bad_input merge --input ck --shards p1,d2 --output m2
  expect_usage model --input ck --output m3 --calibration-damping 1
  expect_usage model --input ck --output m3 --calibration st/statistics.safetensors --calibration-damping -1
  expect_rc 0 model --input ck --output budget --rank 8 --iters 2 --quiet --bits-budget 2.5 \
    --calibration st/statistics.safetensors
  grep -q '"bits_allocation"' budget/loftq_report.json || fail "report: bits_allocation"
  ;;

shard_merge)
  synth sh F16 2 3 64 96
  expect_rc 0 model --input sh --output full --rank 8 --iters 2 --packed --quiet
  for k in 1 2 3; do
    expect_rc 0 model --input sh --output "part$k" --rank 8 --iters 2 --packed --quiet --shard "$k/3" --threads 1
  done
  [ -f part1/shard_model.safetensors ] || fail "no shard_model.safetensors"
  expect_rc 0 merge --input sh --shards part3,part1,part2 --output merged --quiet
  same_outputs full merged
  check sh merged 8 8
  "$TOOL" packed merged || fail "merged packed codes"
  # Incomplete or inconsistent shard sets are refused.
  expect_bad_input merge --input sh --shards part1,part2 --output m2
  expect_bad_input merge --input sh --shards part1,part1,part2 --output m3
  expect_rc 0 model --input sh --output other --rank 4 --iters 2 --quiet --shard 3/3
  expect_bad_input merge --input sh --shards part1,part2,other --output m4
  expect_bad_input merge --input sh --shards part1,part2,full --output m5
  # A report with a duplicate key is refused, not read as its last value.
  cp -r part2 part2dup
  sed -i '0,/{/s//{"shard": {"index": 9, "count": 9},/' part2dup/loftq_report.json
  grep -c '"shard"' part2dup/loftq_report.json | grep -q 2 || fail "duplicate shard key not planted"
  expect_bad_input merge --input sh --shards part1,part2dup,part3 --output m8
  grep -q "duplicate key 'shard'" "$err_file" || fail "no duplicate-key message: $(cat "$err_file")"
  # A shard changed after its run (one byte of its Q) is refused, and so is a
  # report that records no identity of its files.
  cp -r part2 part2bad
  printf '\x7f' | dd of=part2bad/shard_model.safetensors bs=1 seek=$(($(stat -c %s part2bad/shard_model.safetensors) - 3)) \
    conv=notrunc status=none
  expect_bad_input merge --input sh --shards part1,part2bad,part3 --output m9
  grep -q "not the file this shard's run wrote" "$err_file" || fail "no changed-shard message: $(cat "$err_file")"
  cp -r part2 part2nofiles
  sed -i 's/"files": {/"other": {/' part2nofiles/loftq_report.json
  expect_bad_input merge --input sh --shards part1,part2nofiles,part3 --output m10
  grep -q "records no identity" "$err_file" || fail "no missing-identity message: $(cat "$err_file")"
  expect_usage merge --input sh --output m6
  expect_usage model --input sh --output m7 --shard 0/3
  expect_usage model --input sh --output m7 --shard 4/3
  expect_usage model --input sh --output m7 --shard 3
  ;;

overwrite)
  synth s F32 1 1 64 96
  expect_rc 0 model --input s --output out --rank 4 --iters 1 --quiet
  cp out/adapter_model.safetensors before.safetensors
  expect_bad_input model --input s --output out --rank 8 --iters 1 --quiet
  cmp -s out/adapter_model.safetensors before.safetensors || fail "existing output changed"
  # A failing run leaves the existing output as it was, even with --overwrite.
  expect_bad_input model --input s --output out --rank 65 --quiet --overwrite
  cmp -s out/adapter_model.safetensors before.safetensors || fail "existing output changed by a failed run"
  expect_rc 0 model --input s --output out --rank 8 --iters 1 --quiet --overwrite
  check s out 8 8
  [ -z "$(ls -d out.* 2>/dev/null)" ] || fail "temporary or backup left behind"
  # The input inside the output directory is never replaced.
  cp -r s out/in
  expect_bad_input model --input out/in --output out --rank 4 --quiet --overwrite
  ;;

bad_input)
  synth s F32 1 1 64 96
  printf 'garbage' >bad.safetensors
  expect_bad_input model --input bad.safetensors --output o
  printf '\377\377\377\377\377\377\377\377{}' >hlen.safetensors
  expect_bad_input model --input hlen.safetensors --output o
  expect_bad_input model --input missing.safetensors --output o
  expect_bad_input model --input s --output o --target-modules nothing_matches
  expect_bad_input model --input s --output o --rank 65
  expect_bad_input model --input s --output o --bits 9
  mkdir empty
  expect_bad_input model --input empty --output o
  expect_usage model --input s
  expect_usage model --output o
  expect_usage model --input s --output o --lora-alpha 0
  expect_usage model --input s --output o --lora-alpha abc
  expect_usage model --input s --output o --target-modules q_proj,,v_proj
  expect_usage model --input s --output o --bogus
  expect_rc 0 model --help
  grep -q 'loftq model' "$out_file" || fail "--help does not document model"
  ;;

values)
  synth s F32 1 1 64 96
  # lora_alpha far from r makes the adapter Inf or zeros in float32.
  for a in 1e-300 1e300 1e-7 2e6 inf nan; do expect_usage model --input s --output o --lora-alpha "$a"; done
  # Names from the file are escaped when printed.
  hdr='{"x\u001b[31m\n.q_proj.weight":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]}}'
  { printf "\\x$(printf %02x "${#hdr}")\\0\\0\\0\\0\\0\\0\\0"; printf '%s' "$hdr"; head -c 16 /dev/zero; } >esc.safetensors
  expect_refused "tensor 'x\\\\x1b\\[31m\\\\x0a\\.q_proj\\.weight'" model --input esc.safetensors --output o
  ! grep -q $'\x1b' "$err_file" || fail "a raw escape character reached stderr"
  ;;

interrupt)
  # Signalled once the first tensor is done (the temporary directory exists
  # then); the whole run takes far longer than that.
  synth big F32 1 8 384 1024
  for sig in INT TERM; do
    "$LOFTQ" model --input big --output out --rank 16 --iters 10 --svd exact --threads 1 >"$out_file" 2>"$err_file" &
    pid=$!
    for _ in $(seq 600); do
      grep -q '\[1/56\]' "$err_file" && break
      sleep 0.05
    done
    kill -s "$sig" "$pid"
    wait "$pid"
    rc=$?
    [ "$rc" -eq 130 ] || { show; fail "exit status $rc after SIG$sig, expected 130 (run finished too fast?)"; }
    [ "$(ls -A | LC_ALL=C sort | tr '\n' ' ')" = "big " ] || fail "left behind after SIG$sig: $(ls -A)"
  done
  # Inside one tensor: 100000 iterations would take minutes, but the signal
  # reaches the library (Options::cancel) and stops it within a step.
  "$LOFTQ" model --input big --output out --rank 16 --iters 100000 --threads 1 >"$out_file" 2>"$err_file" &
  pid=$!
  wait_for 'out.tmp-*'
  sleep 0.3
  t0=$(date +%s%N)
  kill -s TERM "$pid"
  wait "$pid"
  rc=$?
  ms=$(( ($(date +%s%N) - t0) / 1000000 ))
  [ "$rc" -eq 130 ] || { show; fail "exit status $rc after SIGTERM inside a tensor, expected 130"; }
  [ "$ms" -lt 3000 ] || fail "SIGTERM inside a tensor took $ms ms to act on"
  [ "$(ls -A | LC_ALL=C sort | tr '\n' ' ')" = "big " ] || fail "left behind after SIGTERM inside a tensor: $(ls -A)"
  ;;

bits_budget)
  # Mixed precision over stories260K: measured at 2/3/4 bits, allocated, written.
  stories ck
  expect_rc 0 model --input ck --output b25 --bits-budget 2.5 --rank 4 --iters 2 --packed
  grep -q 'bit budget 2.5: .* at 2 bits, .* at 3 bits' "$out_file" || { show; fail "no allocation summary"; }
  grep -q '\[140/140\]' "$err_file" || { show; fail "progress does not count the measuring runs"; }
  check ck b25 4 4
  "$TOOL" packed b25 || fail "mixed-width packed codes"
  expect_rc 0 model --input ck --output b2 --bits 2 --rank 4 --iters 2 --quiet
  # Average <= 2.5, several widths, and a lower total ||W - Q - s B A||^2
  # (computed from the files) than all-2-bit.
  "$TOOL" budget ck b25 b2 2.5 || fail "budget 2.5"
  [ "$("$TOOL" get b25/loftq_report.json bits_allocation/exact)" = true ] || fail "allocation not exact"
  # Budget 4: every target at 4 bits, the same files as --bits 4.
  expect_rc 0 model --input ck --output b4 --bits-budget 4 --rank 4 --iters 2 --packed --quiet
  expect_rc 0 model --input ck --output f4 --bits 4 --rank 4 --iters 2 --packed --quiet
  same_outputs b4 f4
  [ "$("$TOOL" get b4/loftq_report.json bits_allocation/tensors_per_width)" = '{"4":35}' ] || fail "budget 4 is not all 4-bit"
  # Invalid budgets and combinations: exit 2, one line, nothing written.
  for bad in "--bits-budget 1.5" "--bits-budget 4.5" "--bits-budget abc" "--bits-budget nan" "--bits-budget inf" \
             "--bits-budget=" "--bits-budget 2.5 --bits 3" "--bits 4 --bits-budget 3" "--bits-budget 3 --shard 1/2"; do
    # shellcheck disable=SC2086
    expect_usage model --input ck --output bad $bad
    [ "$(wc -l <"$err_file")" -eq 1 ] || { show $bad; fail "not a one-line message for $bad"; }
  done
  ;;

bnb_nf4)
  # --format bnb-nf4: rows of 96 (blocks of 64 cross rows), an F32 input so
  # the default format's Q is exact. Decoded by bitsandbytes' rules, the
  # targets are that Q bit for bit; with --double-quant (bitsandbytes' nested
  # absmax) they are the Q the adapter was fitted to.
  synth s F32 1 1 96 160
  expect_rc 0 model --input s --output plain --rank 4 --iters 2 --quiet
  expect_rc 0 model --input s --output b --rank 4 --iters 2 --format bnb-nf4 --quiet
  "$TOOL" bnb s b plain || fail "bnb-nf4 output"
  cmp -s plain/adapter_model.safetensors b/adapter_model.safetensors || fail "the adapter differs from the default format's"
  [ "$(ls b | LC_ALL=C sort | tr '\n' ' ')" = "adapter_config.json adapter_model.safetensors config.json loftq_report.json model.safetensors " ] ||
    fail "b/ holds $(ls b)"
  expect_rc 0 model --input s --output bd --rank 4 --iters 2 --format bnb-nf4 --double-quant --quiet
  "$TOOL" bnb s bd || fail "bnb-nf4 --double-quant output"
  bd=$("$TOOL" get bd/loftq_report.json average_bits_per_weight)
  awk -v b="$bd" 'BEGIN { exit !(b > 4.12 && b < 4.16) }' || fail "bnb double-quant bits per weight $bd"
  # --packed beside it: the fp32 scales bitsandbytes recovers, the same Q.
  expect_rc 0 model --input s --output bp --rank 4 --iters 2 --format bnb-nf4 --double-quant --packed --quiet
  cmp -s bd/model.safetensors bp/model.safetensors || fail "--packed changed the bnb-nf4 base"
  grep -aq 'up_proj.weight.qscales"' bp/model.packed.safetensors || fail "no fp32 scales in the packed file"
  ! grep -aq 'qscales_q' bp/model.packed.safetensors || fail "int8 scales in the packed file"
  # Options bitsandbytes cannot hold: a usage error (exit 2) before any work.
  expect_usage model --input s --output x --format bnb-nf4 --bits 2
  grep -q -- "bits 4 --quantizer nf" "$err_file" || { show; fail "message"; }
  expect_usage model --input s --output x --format bnb-nf4 --quantizer uniform
  grep -q -- "bits 4 --quantizer nf" "$err_file" || { show; fail "message"; }
  expect_usage model --input s --output x --format bnb-nf4 --block-size 32
  grep -q -- "block-size 64, 128" "$err_file" || { show; fail "message"; }
  expect_usage model --input s --output x --format bnb-nf4 --shard 1/2
  grep -q -- "shard" "$err_file" || { show; fail "message"; }
  expect_usage model --input s --output x --format bnb-nf4 --bits-budget 3
  grep -q -- "bits 4 --quantizer nf" "$err_file" || { show; fail "message"; }
  rm s/config.json
  expect_bad_input model --input s --output x --format bnb-nf4
  grep -q -- "config.json" "$err_file" || { show; fail "message"; }
  [ ! -e x ] || fail "x/ written on bad input"
  ;;

double_quant)
  # --packed --double-quant: 8-bit scale codes decode (by the documented
  # formula) to the base model's Q, fewer bits per weight; sharding and merge
  # carry the payload.
  synth s F32 2 2 256 512
  expect_rc 0 model --input s --output dq --rank 4 --iters 2 --packed --double-quant --quiet
  check s dq 4 4
  "$TOOL" packed dq || fail "double-quantized packed codes"
  # The refit after double quantization is no LoftQ iteration: 2 ran, as
  # without it (init reports the same count, see tests/cli).
  n=$(grep -c '"module":' dq/loftq_report.json)
  [ "$(grep -c '"iterations_run": 2' dq/loftq_report.json)" -eq "$n" ] || fail "iterations_run is not 2 for every tensor"
  expect_rc 0 model --input s --output plain --rank 4 --iters 2 --packed --quiet
  bd=$("$TOOL" get dq/loftq_report.json average_bits_per_weight)
  bp=$("$TOOL" get plain/loftq_report.json average_bits_per_weight)
  [ "$bp" = 4.5 ] || fail "plain bits per weight $bp"
  awk -v b="$bd" 'BEGIN { exit !(b > 4.12 && b < 4.16) }' || fail "double-quant bits per weight $bd"
  [ "$(stat -c %s dq/model.packed.safetensors)" -lt "$(stat -c %s plain/model.packed.safetensors)" ] ||
    fail "the double-quantized packed file is not smaller"
  for k in 1 2; do
    expect_rc 0 model --input s --output "part$k" --rank 4 --iters 2 --packed --double-quant --quiet --shard "$k/2"
  done
  expect_rc 0 merge --input s --shards part2,part1 --output merged --quiet
  same_outputs dq merged
  "$TOOL" packed merged || fail "merged double-quantized codes"
  # With budget, too: mixed widths and 8-bit scales in one file.
  expect_rc 0 model --input s --output both --rank 4 --iters 2 --packed --double-quant --bits-budget 3 --quiet
  "$TOOL" packed both || fail "mixed widths with double quantization"
  ;;

last)
  # --last returns the last iterate, as init --last does for the same matrix.
  synth s F32 1 1 64 96
  name=model.layers.0.self_attn.q_proj.weight
  expect_rc 0 model --input s --output m --rank 4 --iters 3 --last --target-modules q_proj --threads 1 --quiet
  [ "$("$TOOL" get m/loftq_report.json "tensors/$name/best_iteration")" = 3 ] || fail "best_iteration is not the last"
  "$TOOL" npy s/model.safetensors "$name" W.npy || fail "npy W"
  "$TOOL" npy m/model.safetensors "$name" Q.npy || fail "npy Q"
  expect_rc 0 init --input W.npy --output i --rank 4 --iters 3 --last --threads 1 --quiet
  cmp -s Q.npy i/Q.npy || fail "model --last and init --last give different Q"
  [ "$("$TOOL" get m/loftq_report.json "tensors/$name/history")" = "$("$TOOL" get i/report.json history)" ] ||
    fail "model --last and init --last ran different iterations"
  # Shards that returned different iterates are not one run.
  expect_rc 0 model --input s --output p1 --rank 4 --iters 3 --last --quiet --shard 1/2
  expect_rc 0 model --input s --output p2 --rank 4 --iters 3 --quiet --shard 2/2
  expect_bad_input merge --input s --shards p1,p2 --output merged
  grep -q '"keep_best": false' p1/loftq_report.json || fail "--last not recorded in the settings"
  expect_usage model --input s --output o --last --last
  expect_usage model --input s --output o --last=1
  ;;

scale_start)
  synth s F32 1 1 64 96
  expect_rc 0 model --input s --output sv --rank 4 --iters 2 --packed --scale search --start svd --quiet
  check s sv 4 4
  "$TOOL" packed sv || fail "packed codes with searched scales"
  [ "$("$TOOL" get sv/loftq_report.json settings/scale)/$("$TOOL" get sv/loftq_report.json settings/start)" = search/svd ] ||
    fail "scale/start not recorded"
  grep -aq '"loftq.scale":"search"' sv/model.packed.safetensors || fail "packed metadata lacks loftq.scale search"
  expect_rc 0 model --input s --output ab --rank 4 --iters 2 --scale absmax --start zero --svd exact --quiet
  [ "$("$TOOL" get ab/loftq_report.json settings/scale)" = absmax ] || fail "scale absmax not recorded"
  for bad in "--scale mean" "--start random" "--start="; do
    # shellcheck disable=SC2086
    expect_usage model --input s --output bad $bad
    [ "$(wc -l <"$err_file")" -eq 1 ] || { show $bad; fail "not a one-line message for $bad"; }
  done
  ;;

*)
  fail "unknown case"
  ;;
esac
exit 0
