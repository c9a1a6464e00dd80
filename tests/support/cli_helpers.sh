# Helpers shared by the shell tests of the loftq tool (tests/cli, tests/model,
# tests/properties). Sourced, not run:
#
#   source "$(dirname "$0")/../support/cli_helpers.sh"
#   setup_case CASE LOFTQ WORKDIR    # sets case_name, LOFTQ, WORK, out_file, err_file; cd WORK
#   setup_script HELPERS CASE LOFTQ TOOL WORKDIR [DATA_DIR]   # the same, then TOOL, DATA and
#                                    # tests/support/HELPERS_helpers.sh (model or npytool)
#
# WORKDIR is wiped and rebuilt. The tool's stdout and stderr go to files next
# to WORKDIR, so a listing of WORKDIR sees only what the tool wrote there.

# shellcheck shell=bash
support_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

setup_case() {
  case_name=$1
  LOFTQ=$2
  rm -rf "$3"
  mkdir -p "$3" || exit 1
  WORK=$(cd "$3" && pwd)
  cd "$WORK" || exit 1
  out_file="$WORK.stdout"
  err_file="$WORK.stderr"
  rm -f "$out_file" "$err_file"
}

setup_script() {
  setup_case "$2" "$3" "$5"
  # shellcheck disable=SC2034  # used by the scripts and helpers that source this file
  TOOL=$4 DATA=${6:-}
  # shellcheck source=/dev/null
  source "$support_dir/$1_helpers.sh"
}

fail() {
  echo "FAIL [$case_name]: $*" >&2
  [ -s "${err_file:-}" ] && { echo "--- last stderr:" >&2; cat "$err_file" >&2; }
  exit 1
}

# run ARGS...: runs loftq, leaving its exit status in $rc and its output in
# $out_file / $err_file.
run() {
  "$LOFTQ" "$@" >"$out_file" 2>"$err_file"
  rc=$?
}

show() { echo "--- args: $*" >&2; echo "--- stdout:" >&2; cat "$out_file" >&2; echo "--- stderr:" >&2; cat "$err_file" >&2; }

tree_listing() { find . -mindepth 1 | LC_ALL=C sort; }

# Polls every 0.01 s for up to SECONDS (default 30) until a path matches GLOB,
# that is, until a run in the background has got that far; status 1 if none did.
wait_for() {  # GLOB [SECONDS]
  local i
  for ((i = 0; i < ${2:-30} * 100; i++)); do
    compgen -G "$1" >/dev/null && return 0
    sleep 0.01
  done
  return 1
}

expect_rc() {  # WANT ARGS...
  local want=$1
  shift
  run "$@"
  [ "$rc" -eq "$want" ] || { show "$@"; fail "exit status $rc, expected $want"; }
}

# A usage error: exit 2, a message on stderr, nothing created.
expect_usage() {
  local before after
  before=$(tree_listing)
  expect_rc 2 "$@"
  [ -s "$err_file" ] || { show "$@"; fail "no message on stderr"; }
  after=$(tree_listing)
  [ "$before" = "$after" ] || { show "$@"; fail "files changed: $(diff <(echo "$before") <(echo "$after"))"; }
}

# Bad input: exit 1, exactly one 'loftq: error:' line on stderr, nothing
# on stdout, and the working tree exactly as before (no output, no temps).
expect_bad_input() {
  local before after
  before=$(tree_listing)
  expect_rc 1 "$@"
  [ "$(wc -l <"$err_file")" -eq 1 ] || { show "$@"; fail "stderr is not exactly one line"; }
  grep -q '^loftq: error: ' "$err_file" || { show "$@"; fail "stderr does not start with 'loftq: error: '"; }
  [ ! -s "$out_file" ] || { show "$@"; fail "stdout is not empty"; }
  after=$(tree_listing)
  [ "$before" = "$after" ] || { show "$@"; fail "files changed: $(diff <(echo "$before") <(echo "$after"))"; }
}

# Every entry under the working directory: files with their sha256, links
# with their targets, directories by name.
tree_state() {
  { find . -mindepth 1 ! -type f -printf '%y %p %l\n'; find . -mindepth 1 -type f -exec sha256sum {} +; } | LC_ALL=C sort
}

# A refused run: exit 1, one 'loftq: error:' line matching the extended
# regex PATTERN, nothing on stdout, and every file as before: inputs and any
# earlier output byte for byte, no staging directory, no new output.
expect_refused() {  # PATTERN ARGS...
  local pattern=$1 before after
  shift
  before=$(tree_state)
  expect_rc 1 "$@"
  [ "$(wc -l <"$err_file")" -eq 1 ] || { show "$@"; fail "stderr is not exactly one line"; }
  grep -q '^loftq: error: ' "$err_file" || { show "$@"; fail "stderr does not start with 'loftq: error: '"; }
  grep -Eq -- "$pattern" "$err_file" || { show "$@"; fail "the message does not match '$pattern'"; }
  [ ! -s "$out_file" ] || { show "$@"; fail "stdout is not empty"; }
  after=$(tree_state)
  [ "$before" = "$after" ] || { show "$@"; fail "files changed: $(diff <(echo "$before") <(echo "$after"))"; }
}

# tokens OUT.npy N T SEED VOCAB: an N x T int32 .npy of ids in 0..VOCAB-1 (bash's seeded RANDOM).
tokens() {
  local out=$1 n=$2 t=$3 vocab=$5 hdr i x
  RANDOM=$4
  hdr="{'descr': '<i4', 'fortran_order': False, 'shape': ($n, $t), }"
  while [ $(((10 + ${#hdr} + 1) % 64)) -ne 0 ]; do hdr="$hdr "; done
  {
    printf '\x93NUMPY\x01\x00'
    printf "$(printf '\\x%02x\\x%02x' $(((${#hdr} + 1) % 256)) $(((${#hdr} + 1) / 256)))"
    printf '%s\n' "$hdr"
    for ((i = 0; i < n * t; i++)); do
      x=$((RANDOM % vocab))
      printf "$(printf '\\x%02x\\x%02x\\x00\\x00' $((x % 256)) $((x / 256)))"
    done
  } > "$out" || fail "tokens $out"
}

# Crash tests of the publish path (strace fault injection). dir_digest DIR: a
# hash of DIR's entry names and contents, "missing" when DIR is no directory;
# a report by its "rank" entries only (it records timings).
dir_digest() {
  [ -d "$1" ] || { echo missing; return; }
  (cd "$1" && for f in $(ls -A | LC_ALL=C sort); do
    echo "$f"
    case $f in *report.json) grep -o '"rank": *[0-9]*' "$f" ;; *) sha256sum <"$f" ;; esac
  done) | sha256sum
}

# kill_each_call MODE CALLS MAX ARGS...: `loftq ARGS` publishes over `out`
# (restored from ref_old before each run) what ref_new holds; each run is
# killed (SIGKILL) at the N-th call of one system call of CALLS, N = 1, 2, ...
# until a run ends (then with exactly ref_new) or N passes MAX. MODE fallback:
# renameat2 fails with EINVAL, as on a file system without RENAME_EXCHANGE.
# After a kill, out holds the previous output or the new one, or nothing
# (fallback, between its two renames). The next run (the array RERUN: loftq's
# arguments of a run refused after its checks) exits 1 and leaves out holding
# the previous output or the new one (the new one when out was missing: the
# first rename is the commit point, and the next run finishes the publish,
# also after being killed at its own first rename or removal), and nothing
# else beside it. Kills are counted in $points.
kill_each_call() {
  local mode=$1 calls=$2 max=$3 extra=() trace=() sc n k state s old new keep
  shift 3
  command -v strace >/dev/null || { echo "skipped: strace is not installed"; exit 77; }
  strace -f -o /dev/null true 2>/dev/null || { echo "skipped: ptrace is not permitted here"; exit 77; }
  [ "$mode" = fallback ] && extra=(-e inject=renameat2:error=EINVAL) && trace=(strace -f -o /dev/null "${extra[@]}")
  old=$(dir_digest ref_old) new=$(dir_digest ref_new)
  [ "$old" != "$new" ] || fail "the two outputs are alike; nothing to tell them apart"
  rm -rf out
  cp -a ref_old out
  keep=$(ls -A | LC_ALL=C sort | tr '\n' ' ')
  for sc in $calls; do
    [ "$mode" = fallback ] && [ "$sc" = renameat2 ] && continue
    for n in $(seq 1 "$max"); do
      rm -rf out
      cp -a ref_old out
      strace -f -o /dev/null "${extra[@]}" -e "inject=$sc:signal=SIGKILL:when=$n" "$LOFTQ" "$@" \
        >"$out_file" 2>"$err_file"
      rc=$?
      state=$(dir_digest out)
      if [ "$rc" -eq 0 ]; then
        [ "$state" = "$new" ] || fail "$mode, $sc #$n: exit 0 without the new output"
        break
      fi
      points=$((points + 1))
      [ "$state" = "$old" ] || [ "$state" = "$new" ] || { [ "$mode" = fallback ] && [ "$state" = missing ]; } ||
        fail "$mode: killed at $sc #$n: out is neither the previous output nor the new one ($(ls -A out 2>&1))"
      if [ "$state" = missing ]; then
        for k in renameat2 renameat unlinkat; do
          [ "$mode" = fallback ] && [ "$k" = renameat2 ] && continue
          strace -f -o /dev/null "${extra[@]}" -e "inject=$k:signal=SIGKILL:when=1" "$LOFTQ" "${RERUN[@]}" \
            >"$out_file" 2>"$err_file"
          s=$(dir_digest out)
          [ "$s" = missing ] || [ "$s" = "$new" ] ||
            fail "$mode: killed at $sc #$n, the next run killed at $k: out is not the new output ($(ls -A))"
        done
      fi
      "${trace[@]}" "$LOFTQ" "${RERUN[@]}" >"$out_file" 2>"$err_file"
      rc=$?
      [ "$rc" -eq 1 ] || { show "${RERUN[@]}"; fail "$mode, $sc #$n: the next run exited $rc"; }
      s=$(dir_digest out)
      if [ "$state" = missing ]; then
        [ "$s" = "$new" ] || fail "$mode: killed at $sc #$n with out missing, then a run: not the new output"
      else
        [ "$s" = "$old" ] || [ "$s" = "$new" ] ||
          fail "$mode: killed at $sc #$n, then a run: out is neither the previous output nor the new one"
      fi
      [ "$(ls -A | LC_ALL=C sort | tr '\n' ' ')" = "$keep" ] ||
        fail "$mode: killed at $sc #$n, then a run: left behind: $(ls -A)"
    done
  done
}
