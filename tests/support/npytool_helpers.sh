# Helpers of cli_test.sh and cli_safety_test.sh, after cli_helpers.sh's
# setup_case; they need TOOL (npytool).
# shellcheck shell=bash

make_w() { "$TOOL" make "$@" || fail "npytool make $*"; }

check_outputs() {  # DIR M N R
  "$TOOL" check "$1/Q.npy" "$2" "$3" || fail "Q.npy in $1"
  "$TOOL" check "$1/A.npy" "$2" "$4" || fail "A.npy in $1"
  "$TOOL" check "$1/B.npy" "$3" "$4" || fail "B.npy in $1"
  [ -f "$1/report.json" ] || fail "no report.json in $1"
}
