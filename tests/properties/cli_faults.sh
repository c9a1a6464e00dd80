#!/usr/bin/env bash
# The loftq tool under faults, one case per CTest test:
#
#   bash cli_faults.sh CASE /path/to/loftq /path/to/npytool WORKDIR
#
# In every case: the input is never modified (sha256 before/after), no partial
# output or temporary is left behind (a directory listing before/after, and
# an existing output directory keeps its old files byte for byte), the exit
# status is the documented one and the message is exactly one stderr line.
#
#   unwritable       output under a regular file, under /proc (a filesystem
#                    that refuses mkdir even for root), and a read-only
#                    directory when not root (root ignores permissions)
#   file_size_limit  a full disk, simulated with `ulimit -f`: write() fails
#                    with EFBIG (SIGXFSZ is ignored so the tool sees it),
#                    for a fresh output directory and an existing one
#   sigint           SIGINT mid-run, fresh and into an existing directory
#   input_is_output  --output naming the input file, its directory (input
#                    called Q.npy), a symlink to it, a hard link to it
set -u

# shellcheck source=../support/cli_helpers.sh
source "$(dirname "$0")/../support/cli_helpers.sh"
setup_case "$1" "$2" "$4"
TOOL=$3

listing() { find . -mindepth 1 -printf '%p %s\n' | LC_ALL=C sort; }
digest() { sha256sum "$@" | LC_ALL=C sort; }

# expect_failure WANT_RC ARGS...: runs the tool (in the current shell's
# limits) and checks the exit status and the one-line 'loftq: error:' message.
expect_failure() {
  local want=$1
  shift
  "$LOFTQ" "$@" >"$out_file" 2>"$err_file"
  rc=$?
  [ "$rc" -eq "$want" ] || fail "args: $* -> exit $rc, expected $want"
  [ "$(wc -l <"$err_file")" -eq 1 ] || fail "args: $* -> stderr is not one line"
  grep -q '^loftq: error: ' "$err_file" || fail "args: $* -> message does not start with 'loftq: error: '"
  [ ! -s "$out_file" ] || fail "args: $* -> wrote to stdout on failure"
}

"$TOOL" make W.npy 48x80 f4 C || fail "npytool make"
w_sum=$(digest W.npy)

case "$case_name" in
unwritable)
  printf 'a regular file\n' >file
  before=$(listing)
  expect_failure 1 init --quiet --input W.npy --output file/out --rank 4 --iters 2
  expect_failure 1 init --quiet --input W.npy --output file/a/b/c --rank 4 --iters 2
  expect_failure 1 init --quiet --input W.npy --output file --rank 4 --iters 2
  [ "$before" = "$(listing)" ] || fail "files changed under an unusable output"
  if [ -d /proc/self ]; then
    expect_failure 1 init --quiet --input W.npy --output /proc/loftq-fault-test --rank 4 --iters 2
    [ ! -e /proc/loftq-fault-test ] || fail "created something in /proc"
    [ -z "$(ls -d /proc/loftq-fault-test* 2>/dev/null)" ] || fail "temporary left in /proc"
  fi
  if [ "$(id -u)" -ne 0 ]; then
    mkdir ro && chmod 555 ro
    expect_failure 1 init --quiet --input W.npy --output ro/out --rank 4 --iters 2
    chmod 755 ro
    [ -z "$(ls -A ro)" ] || fail "wrote into a read-only directory"
  else
    echo "note: running as root, the read-only directory case is skipped (root ignores permissions)" >&2
  fi
  [ "$before" = "$(listing)" ] || fail "files changed: $(diff <(echo "$before") <(listing))"
  ;;

file_size_limit)
  # A fresh output directory: Q.npy (48 x 80 float32, ~15 KiB) exceeds 8 KiB.
  before=$(listing)
  (
    trap '' XFSZ
    ulimit -f 8
    expect_failure 1 init --quiet --input W.npy --output out --rank 4 --iters 2
  ) || exit 1
  grep -qi 'file too large\|write' "$err_file" || fail "message does not name the write failure: $(cat "$err_file")"
  [ "$before" = "$(listing)" ] || fail "partial output left: $(diff <(echo "$before") <(listing))"
  # An existing output directory: the previous result stays byte for byte.
  "$LOFTQ" init --quiet --input W.npy --output prev --rank 4 --iters 2 >/dev/null 2>"$err_file" || fail "first run"
  prev_sum=$(cd prev && digest *)
  before=$(listing)
  (
    trap '' XFSZ
    ulimit -f 8
    expect_failure 1 init --quiet --input W.npy --output prev --rank 8 --iters 3 --bits 2
  ) || exit 1
  [ "$prev_sum" = "$(cd prev && digest *)" ] || fail "existing output changed"
  [ "$before" = "$(listing)" ] || fail "temporaries left: $(diff <(echo "$before") <(listing))"
  ;;

sigint)
  "$TOOL" make big.npy 640x640 f4 C || fail "npytool make big"
  big_sum=$(digest big.npy)
  # An earlier output (init refuses a directory holding anything else).
  "$LOFTQ" init --quiet --input W.npy --output prev --rank 4 --iters 2 >/dev/null 2>"$err_file" || fail "first run"
  prev_sum=$(cd prev && digest *)
  for target in fresh prev; do
    before=$(listing)
    "$LOFTQ" init --quiet --input big.npy --output "$target" --rank 32 --iters 400 --svd exact --threads 1 \
      >/dev/null 2>"$err_file" &
    pid=$!
    sleep 1
    kill -s INT "$pid" 2>/dev/null
    wait "$pid"
    rc=$?
    if [ "$rc" -eq 0 ]; then
      echo "note: the run finished before SIGINT arrived ($target)" >&2
      [ -f "$target/report.json" ] || fail "exit 0 without output"
      rm -rf fresh
      continue
    fi
    [ "$rc" -eq 130 ] || fail "SIGINT ($target): exit $rc, expected 130"
    [ "$(wc -l <"$err_file")" -le 1 ] || fail "SIGINT ($target): more than one stderr line"
    [ "$before" = "$(listing)" ] || fail "SIGINT ($target): files changed: $(diff <(echo "$before") <(listing))"
  done
  [ "$prev_sum" = "$(cd prev && digest *)" ] || fail "existing output changed"
  [ "$big_sum" = "$(digest big.npy)" ] || fail "input changed"
  ;;

input_is_output)
  mkdir d
  cp W.npy d/Q.npy
  ln -s "$WORK/W.npy" link.npy
  mkdir h
  ln W.npy h/A.npy
  ln -s "$WORK/d" dlink
  before=$(listing)
  sums=$(digest W.npy d/Q.npy)
  expect_failure 1 init --quiet --input W.npy --output W.npy --rank 4 --iters 2
  expect_failure 1 init --quiet --input d/Q.npy --output d --rank 4 --iters 2
  expect_failure 1 init --quiet --input d/Q.npy --output dlink --rank 4 --iters 2
  expect_failure 1 init --quiet --input d/Q.npy --output ./d/ --rank 4 --iters 2
  expect_failure 1 init --quiet --input link.npy --output link.npy --rank 4 --iters 2
  expect_failure 1 init --quiet --input W.npy --output h --rank 4 --iters 2
  expect_failure 1 init --quiet --input "$WORK/d/../d/Q.npy" --output d --rank 4 --iters 2
  [ "$sums" = "$(digest W.npy d/Q.npy)" ] || fail "input modified"
  [ "$before" = "$(listing)" ] || fail "files changed: $(diff <(echo "$before") <(listing))"
  ;;

*)
  fail "unknown case"
  ;;
esac
[ "$w_sum" = "$(digest W.npy)" ] || fail "input W.npy modified"
echo "PASS [$case_name]"
