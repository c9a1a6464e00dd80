#!/usr/bin/env bash
# Tests of how `loftq model` takes its input, whatever happens to it during
# the run: side files read once, when the input is opened, and only from
# inside it; an input swapped and swapped back refused; an input whose output
# the readers could not read back refused before any work. One case per CTest
# test, as model_safety_test.sh:
#
#   bash model_input_test.sh CASE /path/to/loftq /path/to/modeltool WORKDIR DATA_DIR
#
# WORKDIR is wiped and rebuilt; checkpoints are made here by modeltool.
# Exit 77 (a CTest skip) when a case needs data that is absent.
set -u

# shellcheck source=../support/cli_helpers.sh
source "$(dirname "$0")/../support/cli_helpers.sh"
setup_script model "$@"

# swapped_during_open FILE: X swapped for X2 and back while it is opened. The
# open of X/FILE is held 2 s before and 2 s after it runs (strace delay
# injection), X2 put at X's path during the first hold and X put back during
# the second, so the path names X again at every later check. What was read
# at the open then comes from X2: the run must refuse, never publish it with
# X's other files. (The open's number among the run's openat calls is read
# from a traced run first.) Untouched, the same run goes through.
swapped_during_open() {
  local first n
  command -v strace >/dev/null || { echo "skipped: strace is not installed"; exit 77; }
  strace -f -o /dev/null true 2>/dev/null || { echo "skipped: ptrace is not permitted here"; exit 77; }
  # LeakSanitizer cannot run under ptrace: the traced runs keep ASan's other
  # checks and leave leak detection to the untraced cases.
  export ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0"
  strace -f -e trace=openat -o trace.txt "$LOFTQ" model --input X --output t --rank 4 --iters 1 --quiet ||
    fail "the traced run failed"
  first=$(head -1 trace.txt | cut -d' ' -f1)
  n=$(awk -v p="$first" -v f="\"X/$1\"" '$1 == p && /openat\(/ { k++; if (index($0, f)) { print k; exit } }' trace.txt)
  [ -n "$n" ] || fail "no open of X/$1 in the trace"
  rm -rf t trace.txt
  strace -f -o /dev/null -e "inject=openat:delay_enter=2000000:delay_exit=2000000:when=$n" \
    "$LOFTQ" model --input X --output out --rank 4 --iters 1 --quiet >"$out_file" 2>"$err_file" &
  pid=$!
  sleep 1
  mv X X.first && mv X2 X || fail "cannot swap X"
  sleep 2
  mv X X2 && mv X.first X || fail "cannot swap X back"
  wait "$pid"
  rc=$?
  [ "$rc" -eq 1 ] || { show; fail "exit $rc, expected a refusal"; }
  grep -q '^loftq: error: X: replaced while it was being opened' "$err_file" || { show; fail "message"; }
  [ "$(ls -A | LC_ALL=C sort | tr '\n' ' ')" = "X X2 " ] || fail "left behind: $(ls -A)"
  expect_rc 0 model --input X --output out --rank 4 --iters 1 --quiet
  check X out 4 4
}

case "$case_name" in

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
  wait_for 'out.tmp-*' 10 || { kill "$pid"; fail "the run never staged"; }
  mv X X.old && mv X2 X || fail "cannot replace X"
  kill -0 "$pid" 2>/dev/null || fail "the run ended before its input was replaced; nothing tested"
  wait "$pid"
  rc=$?
  [ "$rc" -eq 0 ] || { show; fail "exit $rc"; }
  cmp -s X.old/config.json out/config.json || fail "config.json is not the one of the input the tensors came from"
  cmp -s X.old/tokenizer.json out/tokenizer.json || fail "tokenizer.json is not the one of the input the tensors came from"
  check X.old out 4 4
  ;;

side_aba)
  # The input swapped for another and swapped back while its tensors are
  # opened (swapped_during_open): the tensors would come from the other input.
  synth X F32 1 2 128 256
  synth X2 F32 1 1 64 96
  printf '{"model_type": "llama", "replaced": true}\n' >X2/config.json
  swapped_during_open model.safetensors
  ;;

side_aba_index)
  # The same with a second directory of hard links of the same shards and
  # another index (only the first shard's tensors): every shard file is the
  # input's own, only the index differs, and the run must still refuse, never
  # publish half the model as the input's. Merged, shards of the input are
  # not taken for shards of that directory.
  synth X F32 2 1 64 96
  mkdir X2
  ln X/model-0000[12]-of-00002.safetensors X2/ || fail "cannot link the shards"
  cp X/config.json X2/
  grep -v 'model-00002-of-00002' X/model.safetensors.index.json |
    sed -z 's/,\n\( *\)}/\n\1}/g' >X2/model.safetensors.index.json
  cmp -s X/model.safetensors.index.json X2/model.safetensors.index.json && fail "the two indexes are alike"
  expect_rc 0 model --input X2 --output half --rank 4 --iters 1 --quiet
  check X2 half 4 4
  for k in 1 2; do expect_rc 0 model --input X --output "p$k" --rank 4 --iters 1 --quiet --shard "$k/2"; done
  expect_refused 'computed from a different checkpoint' merge --input X2 --shards p1,p2 --output m
  rm -rf half p1 p2
  swapped_during_open model.safetensors.index.json
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
