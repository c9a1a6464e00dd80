#!/usr/bin/env bash
# Tests of what `loftq model` and `loftq merge` must never do, whatever the
# input, the environment or a signal: lose an input or a previous output,
# follow a mount, collide with an input's name, publish a mixed or wrong
# output, or leave staging behind. One case per CTest test, as model_test.sh:
#
#   bash model_safety_test.sh CASE /path/to/loftq /path/to/modeltool WORKDIR DATA_DIR
#
# WORKDIR is wiped and rebuilt; checkpoints are made here by modeltool.
# Exit 77 (a CTest skip) when a case needs data that is absent.
set -u

# shellcheck source=../support/cli_helpers.sh
source "$(dirname "$0")/../support/cli_helpers.sh"
setup_script model "$@"

case "$case_name" in

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
    wait_for 'out.tmp-*' 4
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
    wait_for "o$k.tmp-*" 4
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
  # SIGKILL at each rename and unlinkat of an --overwrite run of model, then
  # of merge, one point at a time, with and without RENAME_EXCHANGE
  # (kill_each_call): out always holds the previous output or the new one
  # (or, without the exchange, nothing between the two renames, which the
  # next run finishes), and the next run, even one that fails on its input,
  # leaves nothing else behind.
  synth s F32 1 1 64 96
  expect_rc 0 model --input s --output ref_old --rank 4 --iters 1 --quiet
  expect_rc 0 model --input s --output ref_new --rank 8 --iters 1 --quiet
  RERUN=(model --input s --output out --rank 65 --quiet --overwrite)
  points=0
  for mode in exchange fallback; do
    kill_each_call "$mode" "rename renameat2 unlinkat" 60 model --input s --output out --rank 8 --iters 1 --quiet \
      --overwrite
  done
  [ "$points" -ge 8 ] || fail "only $points kill points of model reached"
  model_points=$points
  for k in 1 2; do expect_rc 0 model --input s --output "sh$k" --rank 8 --iters 1 --quiet --shard "$k/2"; done
  rm -rf ref_new
  expect_rc 0 merge --input s --shards sh1,sh2 --output ref_new --quiet
  for mode in exchange fallback; do
    kill_each_call "$mode" "rename renameat2 unlinkat" 60 merge --input s --shards sh1,sh2 --output out --overwrite \
      --quiet
  done
  [ "$((points - model_points))" -ge 8 ] || fail "only $((points - model_points)) kill points of merge reached"
  echo "$model_points kill points of model, $((points - model_points)) of merge"
  ;;

calibrate_crash)
  # calibrate --overwrite killed at each of its renames and removals, as
  # publish_crash: the previous statistics or the complete new ones, never
  # a leftover after the next run.
  [ -e "$DATA/stories260K.bin" ] || { echo "skipped: no stories260K.bin in $DATA"; exit 77; }
  tokens t1.npy 4 16 5 512
  tokens t2.npy 4 16 6 512
  tokens bad.npy 2 8 3 600
  st=(calibrate --input "$DATA/stories260K.bin" --quiet)
  expect_rc 0 "${st[@]}" --tokens t1.npy --output ref_old
  expect_rc 0 "${st[@]}" --tokens t2.npy --output ref_new --imatrix
  RERUN=("${st[@]}" --tokens bad.npy --output out --overwrite)
  points=0
  for mode in exchange fallback; do
    kill_each_call "$mode" "rename renameat2 unlinkat" 40 "${st[@]}" --tokens t2.npy --output out --overwrite --imatrix
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
  wait_for 'par/out.tmp-*/loftq_report.json' 5 || fail "the run never got to publishing"
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

*)
  fail "unknown case"
  ;;
esac
exit 0
