# Helpers shared by the shell tests of the loftq tool (tests/cli, tests/model,
# tests/properties). Sourced, not run:
#
#   source "$(dirname "$0")/../support/cli_helpers.sh"
#   setup_case CASE LOFTQ WORKDIR    # sets case_name, LOFTQ, WORK, out_file, err_file; cd WORK
#
# WORKDIR is wiped and rebuilt. The tool's stdout and stderr go to files next
# to WORKDIR, so a listing of WORKDIR sees only what the tool wrote there.

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
