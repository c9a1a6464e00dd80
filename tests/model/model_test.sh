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
setup_case "$1" "$2" "$4"
TOOL=$3
DATA=$5

stories() {  # DIR [DTYPE] [SHARDS]
  "$TOOL" stories "$DATA/stories260K.bin" "$@"
  local s=$?
  [ $s -eq 77 ] && exit 77
  [ $s -eq 0 ] || fail "modeltool stories $*"
}
synth() { "$TOOL" synth "$@" || fail "modeltool synth $*"; }
check() { "$TOOL" check "$@" || fail "check $*"; }
same_outputs() {  # DIR1 DIR2: every tensor file and the config byte-identical
  local f
  for f in $(cd "$1" && ls *.safetensors adapter_config.json model.safetensors.index.json 2>/dev/null); do
    cmp -s "$1/$f" "$2/$f" || fail "$f differs between $1 and $2"
  done
  [ "$(cd "$1" && ls | LC_ALL=C sort)" = "$(cd "$2" && ls | LC_ALL=C sort)" ] || fail "$1 and $2 hold different files"
}

# Overwrites the last 4 bytes of FILE (the end of its last tensor) with a NaN.
poke_nan() { local n; n=$(stat -c %s "$1") && printf '\377\377\377\377' | dd of="$1" bs=1 seek=$((n - 4)) conv=notrunc status=none || fail "poke $1"; }

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

output_safety)
  # Outputs are compared with inputs as the OS resolves paths, and
  # --overwrite deletes only a directory loftq published.
  synth s F32 1 1 64 96
  expect_rc 0 model --input s --output out --rank 4 --iters 1 --quiet
  [ -f out/.loftq-output ] || fail "no marker in a published output"
  # An input reached through a symbolic link into the output directory.
  mkdir in
  cp s/config.json in/
  ln -s ../out/model.safetensors in/model.safetensors
  expect_refused 'lies inside the output directory' model --input in --output out --rank 4 --iters 1 --quiet --overwrite
  expect_refused 'lies inside the output directory' model --input out --output out --rank 4 --iters 1 --quiet --overwrite
  ln -s out lout
  expect_refused 'symbolic link' model --input s --output lout --rank 4 --iters 1 --quiet --overwrite
  # '..' after a missing directory names nothing, as for the OS; it is not sb.
  mkdir sb
  printf 'keep\n' >sb/keep
  expect_refused "sb/nope does not exist" model --input s --output sb/nope/.. --rank 4 --iters 1 --quiet --overwrite
  # A directory without the marker is not deleted; an empty one is replaced.
  mkdir foreign
  printf 'mine\n' >foreign/notes
  expect_refused 'not a loftq output directory' model --input s --output foreign --rank 4 --iters 1 --quiet --overwrite
  mkdir empty
  expect_rc 0 model --input s --output empty --rank 4 --iters 1 --quiet --overwrite
  check s empty 4 4
  # A checkpoint file named like a file of the output is refused, not lost.
  synth sh F32 2 1 64 96
  for n in adapter_model.safetensors model.packed.safetensors loftq_report.json adapter_config.json; do
    rm -rf "c$n"
    cp -r sh "c$n"
    mv "c$n/model-00001-of-00002.safetensors" "c$n/$n"
    sed -i "s/model-00001-of-00002.safetensors/$n/g" "c$n/model.safetensors.index.json"
    expect_refused "checkpoint file '$n' has the name of a file loftq writes" \
      model --input "c$n" --output o --rank 4 --iters 1 --quiet --packed
  done
  # Without --packed that name is free: every tensor arrives.
  expect_rc 0 model --input cmodel.packed.safetensors --output o --rank 4 --iters 1 --quiet
  check cmodel.packed.safetensors o 4 4
  ;;

merge_trust)
  # merge checks what the shards claim: settings, origin, values, names.
  synth s F32 1 1 64 96
  for k in 1 2; do expect_rc 0 model --input s --output "p$k" --rank 4 --iters 1 --quiet --shard "$k/2"; done
  grep -q '"input_identity": "fnv1a64:' p1/loftq_report.json || fail "no input identity in the shard report"
  # The same layout with other weights: another checkpoint.
  cp -r s s2
  poke_nan s2/model.safetensors
  expect_rc 0 model --input s2 --output o2 --rank 4 --iters 1 --quiet --shard 2/2
  expect_refused 'computed from a different checkpoint' merge --input s --shards p1,o2 --output m
  # Every setting of every report is validated (equal bad values in both).
  for edit in 's/"block_size": 64/"block_size": 0/' 's/"rank": 4/"rank": -1/' 's/"iters": 1,/"iters": 0,/' \
              's/"lora_alpha": [0-9.e+]*/"lora_alpha": 1e-300/' 's/"svd": "randomized"/"svd": "fast"/'; do
    rm -rf b1 b2
    cp -r p1 b1
    cp -r p2 b2
    sed -i "$edit" b1/loftq_report.json b2/loftq_report.json
    cmp -s p1/loftq_report.json b1/loftq_report.json && fail "edit $edit changed nothing"
    expect_refused '^loftq: error: shard settings: [a-z_]+ .*is not' merge --input s --shards b1,b2 --output m
    case $edit in *rank*) grep -q 'rank -1 is not an integer in 1\.\.' "$err_file" || fail "rank -1: $(cat "$err_file")" ;; esac
  done
  rm -rf b1 b2
  cp -r p1 b1
  sed -i 's/"sq_err": [0-9]/"sq_err": -1/' b1/loftq_report.json
  expect_refused "sq_err -1[.0-9]* is not a non-negative number" merge --input s --shards b1,p2 --output m
  # NaN planted in an adapter or in Q after the run: not the files the run
  # wrote (their identities are in the report; merge also refuses NaN
  # values themselves, for a report that records them).
  cp -r p1 n1
  poke_nan n1/adapter_model.safetensors
  expect_refused "n1/adapter_model.safetensors: not the file this shard's run wrote" merge --input s --shards n1,p2 --output m
  cp -r p1 q1
  poke_nan q1/shard_model.safetensors
  expect_refused "q1/shard_model.safetensors: not the file this shard's run wrote" merge --input s --shards q1,p2 --output m
  # A shard named twice, as text or through another path.
  expect_refused 'listed twice' merge --input s --shards p1,p1 --output m
  ln -s p1 lp
  expect_refused 'listed twice' merge --input s --shards p1,./lp/ --output m
  expect_rc 0 merge --input s --shards p2,p1 --output m --quiet
  check s m 4 4
  expect_refused 'is the output directory' merge --input s --shards p2,p1 --output p1 --quiet --overwrite
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
  for _ in $(seq 600); do
    compgen -G 'out.tmp-*' >/dev/null && break
    sleep 0.05
  done
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

overwrite_mounts)
  # --overwrite deletes nothing across a mount and no input, however the input
  # is reached; a mount made while the run computes is caught at publishing.
  synth s F32 1 1 64 96
  cp -r s in
  expect_rc 0 model --input s --output out --rank 4 --iters 1 --quiet
  # A hard link of an input inside the old output: the input is reachable there.
  ln in/model.safetensors out/linked.safetensors
  expect_refused 'lies inside the output directory' model --input in --output out --rank 4 --iters 1 --quiet --overwrite
  rm out/linked.safetensors
  mounts=()
  unmount_all() { local m; for m in "${mounts[@]}"; do umount -l "$m" 2>/dev/null; done; mounts=(); }
  trap unmount_all EXIT
  mkdir out/mnt
  if ! mount --bind in out/mnt 2>/dev/null; then
    echo "skipped the mount cases: mount --bind is not permitted here"
  else
    mounts+=("$WORK/out/mnt")
    sum_in=$(cat in/* | sha256sum)
    expect_refused 'lies inside the output directory|mount point inside the output directory' \
      model --input in --output out --rank 4 --iters 1 --quiet --overwrite
    # A mount of something that is no input: still never deleted through.
    mkdir other
    printf 'keep\n' >other/keep
    umount out/mnt && mounts=() && mount --bind other out/mnt && mounts+=("$WORK/out/mnt") || fail "remount"
    expect_refused 'out/mnt: a mount point inside the output directory' \
      model --input s --output out --rank 4 --iters 1 --quiet --overwrite
    # An input reached through a bind mount of the output elsewhere.
    umount out/mnt && mounts=() || fail "umount"
    cp -r s out/inner
    mkdir view
    mount --bind out view && mounts+=("$WORK/view") || fail "mount view"
    expect_refused 'lies inside the output directory' \
      model --input view/inner --output out --rank 4 --iters 1 --quiet --overwrite
    umount view && mounts=() || fail "umount view"
    rm -rf out/inner
    # The output directory itself a mount point.
    mount --bind out out && mounts+=("$WORK/out") || fail "mount out"
    expect_refused 'the output directory is a mount point' \
      model --input s --output out --rank 4 --iters 1 --quiet --overwrite
    umount out && mounts=() || fail "umount out"
    # Mounted while the run computes: refused when publishing, nothing lost.
    synth big F32 1 2 256 512
    "$LOFTQ" model --input big --output out --rank 8 --iters 4 --svd exact --threads 1 --quiet --overwrite \
      >"$out_file" 2>"$err_file" &
    pid=$!
    for _ in $(seq 400); do compgen -G 'out.tmp-*' >/dev/null && break; sleep 0.01; done
    mount --bind in out/mnt && mounts+=("$WORK/out/mnt") || fail "mount during the run"
    wait "$pid"
    rc=$?
    [ "$rc" -eq 1 ] || { show; fail "a mount made during the run: exit $rc, expected 1"; }
    grep -q 'mount point inside the output directory\|lies inside the output directory' "$err_file" ||
      { show; fail "message"; }
    [ "$(cat in/* | sha256sum)" = "$sum_in" ] || fail "the input changed"
    [ -f out/mnt/model.safetensors ] || fail "the mounted input is gone"
    unmount_all
    [ "$(cat in/* | sha256sum)" = "$sum_in" ] || fail "the input changed"
    [ -z "$(ls -d out.* 2>/dev/null)" ] || fail "left behind: $(ls -d out.*)"
  fi
  rmdir out/mnt
  expect_rc 0 model --input in --output out --rank 8 --iters 1 --quiet --overwrite
  check in out 8 8
  [ -z "$(ls -d out.* 2>/dev/null)" ] || fail "temporary or previous output left behind: $(ls -d out.*)"
  ;;

temp_names)
  # Temporary names are unpredictable and created exclusively: a shard named
  # like another output file's temporary is no collision, even for a run that
  # is PID 1 (the first process of a container).
  synth sh F32 2 1 64 96
  n=adapter_model.safetensors.tmp-1-0
  mv sh/model-00001-of-00002.safetensors "sh/$n"
  sed -i "s/model-00001-of-00002.safetensors/$n/g" sh/model.safetensors.index.json
  pid1=()
  if unshare --pid --fork --mount-proc true 2>/dev/null; then
    pid1=(unshare --pid --fork --mount-proc)
  else
    echo "running without a PID namespace: unshare --pid is not permitted here"
  fi
  # A leftover of a dead run of another PID namespace (the same name as this
  # run's own PID 1, marked, nobody holds it): removed. One without the marker stays.
  mkdir out.tmp-1-0 out.tmp-1-1
  : >out.tmp-1-0/.loftq-output
  printf 'not ours\n' >out.tmp-1-1/notes
  for k in 1 2; do
    "${pid1[@]}" "$LOFTQ" model --input sh --output out --rank 4 --iters 1 --quiet --overwrite \
      >"$out_file" 2>"$err_file"
    rc=$?
    [ "$rc" -eq 0 ] || { show; fail "run $k: exit $rc"; }
    check sh out 4 4
    [ -f "out/$n" ] && [ -f out/model-00002-of-00002.safetensors ] || fail "run $k: shards missing: $(ls out)"
  done
  [ ${#pid1[@]} -eq 0 ] || [ ! -e out.tmp-1-0 ] || fail "the dead run's marked staging directory is still there"
  [ -f out.tmp-1-1/notes ] || fail "a directory without the marker was removed"
  rm -r out.tmp-1-0 out.tmp-1-1 2>/dev/null
  [ "$(ls -A | LC_ALL=C sort | tr '\n' ' ')" = "out sh " ] || fail "left behind: $(ls -A)"
  # Staging names carry 16 random hex digits after the pid, never a counter.
  synth big F32 1 2 256 512
  for k in 1 2; do
    "$LOFTQ" model --input big --output "o$k" --rank 8 --iters 50 --threads 1 --quiet >"$out_file" 2>"$err_file" &
    pid=$!
    for _ in $(seq 400); do compgen -G "o$k.tmp-*" >/dev/null && break; sleep 0.01; done
    name=$(compgen -G "o$k.tmp-*")
    kill -TERM "$pid"
    wait "$pid"
    [[ $name =~ ^o$k\.tmp-$pid-[0-9a-f]{16}$ ]] || fail "staging name $name"
  done
  ;;

deep_json)
  # Every JSON the tool parses goes through the bounded-depth reader; files it
  # only copies are copied byte for byte, never parsed.
  deep() {  # LEVELS: {"a":[[...]]}
    printf '{"a":'
    head -c "$1" /dev/zero | tr '\0' '['
    head -c "$1" /dev/zero | tr '\0' ']'
    printf '}'
  }
  synth s F32 1 1 64 96
  for k in 1 2; do expect_rc 0 model --input s --output "p$k" --rank 4 --iters 1 --quiet --shard "$k/2"; done
  cp -r s d
  deep 300000 >d/config.json
  for fmt in "" "--format bnb-nf4"; do
    # shellcheck disable=SC2086
    expect_refused 'd/config.json: JSON nested deeper than 64' \
      model --input d --output out --rank 4 --iters 1 --quiet $fmt
  done
  deep 20000 >d/config.json
  expect_refused 'd/config.json: JSON nested deeper than 64' \
    model --input d --output out --rank 4 --iters 1 --quiet --format bnb-nf4
  deep 300000 >d/config.json
  expect_refused 'd/config.json: JSON nested deeper than 64' merge --input d --shards p1,p2 --output m
  # Not JSON, or too large to be a configuration: one line naming the file.
  printf '{"a": 1, "a": 2}' >d/config.json
  expect_refused "d/config.json: duplicate key 'a'" model --input d --output out --rank 4 --iters 1 --quiet
  head -c $((17 << 20)) /dev/zero | tr '\0' ' ' >d/config.json
  expect_refused 'd/config.json: larger than 16 MiB' model --input d --output out --rank 4 --iters 1 --quiet
  # Deep but legal (64 levels) is read; the copied side files are never parsed.
  nest() { head -c "$1" /dev/zero | tr '\0' "$2"; }
  { printf '{"model_type": "llama", "x": '; nest 63 '['; nest 63 ']'; printf '}'; } >d/config.json
  for f in generation_config.json tokenizer.json tokenizer_config.json special_tokens_map.json; do
    deep 300000 >"d/$f"
  done
  expect_rc 0 model --input d --output out --rank 4 --iters 1 --quiet
  check d out 4 4
  for f in config.json generation_config.json tokenizer.json tokenizer_config.json special_tokens_map.json; do
    cmp -s "d/$f" "out/$f" || fail "$f not copied byte for byte"
  done
  # A shard report or an index nested deep: refused like any bad JSON.
  cp -r p1 q1
  deep 300000 >q1/loftq_report.json
  expect_refused 'q1/loftq_report.json.*(nested deeper|bad JSON)' merge --input s --shards q1,p2 --output m
  synth sh F32 2 1 64 96
  { printf '{"metadata": {}, "weight_map": {"x": '; nest 300000 '['; nest 300000 ']'; printf '}}'; } \
    >sh/model.safetensors.index.json
  expect_refused 'model.safetensors.index.json.*(nested deeper|bad JSON)' \
    model --input sh --output out2 --rank 4 --iters 1 --quiet
  ;;

publish_crash)
  # SIGKILL at each rename and unlinkat of an --overwrite run, one point at a
  # time (strace fault injection): DIR always holds the complete previous
  # output or the complete new one, and the next run, even one that fails
  # on its input, leaves nothing else behind. Then the same where the file
  # system has no RENAME_EXCHANGE (its renameat2 made to fail with EINVAL).
  command -v strace >/dev/null || { echo "skipped: strace is not installed"; exit 77; }
  strace -f -o /dev/null true 2>/dev/null || { echo "skipped: ptrace is not permitted here"; exit 77; }
  synth s F32 1 1 64 96
  expect_rc 0 model --input s --output ref_old --rank 4 --iters 1 --quiet
  expect_rc 0 model --input s --output ref_new --rank 8 --iters 1 --quiet
  digest() {  # DIR: its file names and contents, the report by its rank (it records timings)
    [ -d "$1" ] || { echo missing; return; }
    (cd "$1" && for f in $(ls -A | LC_ALL=C sort); do
      echo "$f"
      if [ "$f" = loftq_report.json ]; then "$TOOL" get "$f" settings/rank; else sha256sum <"$f"; fi
    done) | sha256sum
  }
  old=$(digest ref_old) new=$(digest ref_new)
  [ "$old" != "$new" ] || fail "the two outputs are alike; nothing to tell them apart"
  points=0
  for mode in exchange fallback; do
    extra=()
    [ "$mode" = fallback ] && extra=(-e inject=renameat2:error=EINVAL)
    # The calls this path makes (strace -f -e trace=file shows them): the
    # writers' renames into the staging directory, the exchange, the removal.
    for sc in rename renameat2 unlinkat; do
      [ "$mode" = fallback ] && [ "$sc" = renameat2 ] && continue
      for n in $(seq 1 60); do
        rm -rf out
        cp -a ref_old out
        strace -f -o /dev/null "${extra[@]}" -e "inject=$sc:signal=SIGKILL:when=$n" \
          "$LOFTQ" model --input s --output out --rank 8 --iters 1 --quiet --overwrite >"$out_file" 2>"$err_file"
        rc=$?
        state=$(digest out)
        if [ "$rc" -eq 0 ]; then
          [ "$state" = "$new" ] || fail "$mode, $sc #$n: exit 0 without the new output"
          break
        fi
        points=$((points + 1))
        if [ "$mode" = exchange ]; then
          [ "$state" = "$old" ] || [ "$state" = "$new" ] ||
            fail "$mode: killed at $sc #$n: out is neither the previous output nor the new one ($(ls -A out 2>&1))"
        fi
        # The next run for out, refused on its input after its checks, clears up.
        run model --input s --output out --rank 65 --quiet --overwrite
        [ "$rc" -eq 1 ] || { show; fail "$mode, $sc #$n: the next run exited $rc"; }
        state=$(digest out)
        [ "$state" = "$old" ] || [ "$state" = "$new" ] ||
          fail "$mode: killed at $sc #$n, then a run: out is neither the previous output nor the new one"
        [ "$(ls -A | LC_ALL=C sort | tr '\n' ' ')" = "out ref_new ref_old s " ] ||
          fail "$mode: killed at $sc #$n, then a run: left behind: $(ls -A)"
      done
    done
  done
  [ "$points" -ge 8 ] || fail "only $points kill points reached"
  echo "$points kill points"
  ;;

environment)
  # Death by the environment: a closed pipe, a file-size limit, threads that
  # cannot be created. Either a complete run (exit 0) or one line and exit 1,
  # never a signal death, never staging left behind.
  synth s F32 1 2 256 512
  "$LOFTQ" model --input s --output piped --rank 4 --iters 1 --threads 2 2>"$err_file" | true
  rc=${PIPESTATUS[0]}
  [ "$rc" -eq 0 ] || { show; fail "stdout a closed pipe: exit $rc"; }
  check s piped 4 4
  "$LOFTQ" model --input s --output closed --rank 4 --iters 1 --threads 2 >&- 2>"$err_file"
  rc=$?
  [ "$rc" -eq 0 ] || { show; fail "stdout closed: exit $rc"; }
  check s closed 4 4
  before=$(tree_state)
  (ulimit -f 500 && exec "$LOFTQ" model --input s --output big --rank 4 --iters 1 --quiet >"$out_file" 2>"$err_file")
  rc=$?
  [ "$rc" -eq 1 ] || { show; fail "ulimit -f: exit $rc, expected 1"; }
  [ "$(wc -l <"$err_file")" -eq 1 ] && grep -q 'File too large' "$err_file" || { show; fail "ulimit -f: message"; }
  # The message names the output as the user did, not a staging path that is gone.
  grep -q ' big/[a-z_.]*: ' "$err_file" && ! grep -q 'tmp-' "$err_file" ||
    { show; fail "ulimit -f: the message names $(cat "$err_file")"; }
  [ "$(tree_state)" = "$before" ] || fail "ulimit -f: files changed: $(ls -A)"
  if [ -n "${ASAN_OPTIONS:-}" ]; then
    echo "skipped --threads under ulimit -v: AddressSanitizer reserves more address space than the limit"
  else
    (ulimit -v 1500000 && exec "$LOFTQ" model --input s --output many --rank 4 --iters 1 --quiet --threads 1024 \
      >"$out_file" 2>"$err_file")
    rc=$?
    [ "$rc" -eq 1 ] || { show; fail "--threads 1024 under ulimit -v: exit $rc, expected 1"; }
    [ "$(wc -l <"$err_file")" -eq 1 ] && grep -q '^loftq: error: cannot start 1024 threads' "$err_file" ||
      { show; fail "--threads 1024 under ulimit -v: message"; }
    [ "$(tree_state)" = "$before" ] || fail "--threads 1024: files changed: $(ls -A)"
  fi
  ;;

side_once)
  # The config and tokenizer files are read when the input is opened: an
  # input replaced during the run (here by rename, as another run's
  # --overwrite does) gives an output whose side files are those of the
  # input its tensors came from.
  synth X F32 1 2 128 256
  printf '{"tokens": "old"}\n' >X/tokenizer.json
  synth X2 F32 1 1 64 96
  printf '{"model_type": "llama", "replaced": true}\n' >X2/config.json
  printf '{"tokens": "new"}\n' >X2/tokenizer.json
  "$LOFTQ" model --input X --output out --rank 4 --iters 40 --threads 1 --quiet >"$out_file" 2>"$err_file" &
  pid=$!
  for _ in $(seq 1000); do compgen -G 'out.tmp-*' >/dev/null && break; sleep 0.01; done
  compgen -G 'out.tmp-*' >/dev/null || { kill "$pid"; fail "the run never staged"; }
  mv X X.old && mv X2 X || fail "cannot replace X"
  kill -0 "$pid" 2>/dev/null || fail "the run ended before its input was replaced; nothing tested"
  wait "$pid"
  rc=$?
  [ "$rc" -eq 0 ] || { show; fail "exit $rc"; }
  cmp -s X.old/config.json out/config.json || fail "config.json is not the one of the input the tensors came from"
  cmp -s X.old/tokenizer.json out/tokenizer.json || fail "tokenizer.json is not the one of the input the tensors came from"
  check X.old out 4 4
  ;;

header_limit)
  # An input the readers accept whose output they would refuse (a safetensors
  # header over 100,000,000 bytes once the output adds its metadata; an index
  # written indented) is refused before any work, in one line naming the
  # input, nothing staged. (expect_rc, not expect_refused: hashing the 100 MB
  # files around each run would cost more than the runs.)
  refused() {  # PATTERN ARGS...
    local pattern=$1
    shift
    expect_rc 1 "$@"
    [ "$(wc -l <"$err_file")" -eq 1 ] && grep -Eq -- "$pattern" "$err_file" || { show; fail "message"; }
    [ "$(ls -A | tr '\n' ' ')" = "s sh " ] || fail "left behind: $(ls -A)"
  }
  synth s F32 1 1 64 96
  "$TOOL" pad s/model.safetensors 99999960 || fail "modeltool pad"
  # A compact index of a sharded input just under the index reader's limit.
  synth sh F32 2 1 64 96
  body=$(tr -d ' \n' <sh/model.safetensors.index.json)
  pre='{"metadata":{"pad":"' rest=${body#'{"metadata":{'}
  n=$((99999990 - ${#pre} - 2 - ${#rest}))
  { printf '%s' "$pre"; head -c "$n" /dev/zero | tr '\0' x; printf '",%s' "$rest"; } >sh/model.safetensors.index.json
  [ "$(stat -c %s sh/model.safetensors.index.json)" -eq 99999990 ] || fail "index size"
  refused "^loftq: error: s: the output's model.safetensors would have a header of 10000[0-9]{4} bytes, over" \
    model --input s --output out --rank 4 --iters 1 --quiet --bits-budget 3
  refused "^loftq: error: sh: the output's model.safetensors.index.json would be 10000[0-9]{4} bytes, over" \
    model --input sh --output out --rank 4 --iters 1 --quiet
  ;;

signal_latency)
  # A run waiting for another to finish publishing into the same parent
  # (its lock held here by flock(1)) still acts on SIGTERM at once.
  command -v flock >/dev/null || { echo "skipped: flock(1) is not installed"; exit 77; }
  synth s F32 1 1 64 96
  mkdir par
  exec 9<par
  flock -x 9 || fail "cannot lock par"
  "$LOFTQ" model --input s --output par/out --rank 4 --iters 1 --quiet >"$out_file" 2>"$err_file" 9<&- &
  pid=$!
  for _ in $(seq 500); do compgen -G 'par/out.tmp-*/loftq_report.json' >/dev/null && break; sleep 0.01; done
  compgen -G 'par/out.tmp-*/loftq_report.json' >/dev/null || fail "the run never got to publishing"
  sleep 0.3
  t0=$(date +%s%N)
  kill -TERM "$pid"
  wait "$pid"
  rc=$?
  ms=$(( ($(date +%s%N) - t0) / 1000000 ))
  exec 9<&-
  [ "$rc" -eq 130 ] || { show; fail "SIGTERM while waiting for the publish lock: exit $rc, expected 130"; }
  [ "$ms" -lt 1000 ] || fail "SIGTERM while waiting for the publish lock took $ms ms"
  [ -z "$(ls -A par)" ] || fail "left behind: $(ls -A par)"
  echo "acted on in $ms ms"
  ;;

side_links)
  # A side file that is a symbolic link is copied only when it leads inside
  # the input directory or, in a Hugging Face cache, into the blobs.
  synth s F32 1 1 64 96
  cp -r s in
  printf 'secret\n' >secret.txt
  ln -s "$WORK/secret.txt" in/tokenizer.model
  expect_refused 'in/tokenizer.model: a symbolic link to .*secret.txt, outside the input directory' \
    model --input in --output out --rank 4 --iters 1 --quiet
  ln -sf ../secret.txt in/tokenizer.model
  expect_refused 'in/tokenizer.model: a symbolic link' model --input in --output out --rank 4 --iters 1 --quiet
  rm in/tokenizer.model
  mkdir in/sub
  printf 'tokens\n' >in/sub/tok.model
  ln -s sub/tok.model in/tokenizer.model
  expect_rc 0 model --input in --output out --rank 4 --iters 1 --quiet
  [ -f out/tokenizer.model ] && [ ! -L out/tokenizer.model ] && cmp -s in/sub/tok.model out/tokenizer.model ||
    fail "a link inside the input was not copied as its file"
  # The cache layout: snapshots/<rev>/ links into blobs/.
  hf=models--x--y
  mkdir -p "$hf/blobs" "$hf/snapshots/abc"
  for f in model.safetensors config.json; do
    cp "s/$f" "$hf/blobs/$f.blob"
    ln -s "../../blobs/$f.blob" "$hf/snapshots/abc/$f"
  done
  expect_rc 0 model --input "$hf/snapshots/abc" --output hfout --rank 4 --iters 1 --quiet
  check "$hf/snapshots/abc" hfout 4 4
  cmp -s s/config.json hfout/config.json || fail "config.json of the cache not copied"
  ln -s "$WORK/secret.txt" "$hf/snapshots/abc/tokenizer.json"
  expect_refused 'tokenizer.json: a symbolic link to .*secret.txt' \
    model --input "$hf/snapshots/abc" --output hfout2 --rank 4 --iters 1 --quiet
  ;;

*)
  fail "unknown case"
  ;;
esac
exit 0
