#!/usr/bin/env bash
# Tests of the loftq command-line tool, one case per CTest test:
#
#   bash cli_test.sh CASE /path/to/loftq /path/to/npytool WORKDIR
#
# WORKDIR is wiped and rebuilt; every input is made here by npytool or printf.
set -u

# shellcheck source=../support/cli_helpers.sh
source "$(dirname "$0")/../support/cli_helpers.sh"
setup_script npytool "$@"

case "$case_name" in

tool_doc)
  # docs/tool.md is `loftq --help-markdown`, generated from the option table;
  # every option of every command's --help is in it, with its help text.
  doc="$(dirname "$0")/../../docs/tool.md"
  expect_rc 0 --help-markdown
  cmp -s "$out_file" "$doc" || {
    diff "$out_file" "$doc" | head -20 >&2
    fail "docs/tool.md is not the output of 'loftq --help-markdown' (regenerate: loftq --help-markdown > docs/tool.md)"
  }
  for cmd in init model merge; do
    expect_rc 0 "$cmd" --help
    grep -q "^## loftq $cmd\$" "$doc" || fail "docs/tool.md has no section for $cmd"
    for opt in $(grep -o -- '^  --[a-z-]*' "$out_file"); do
      grep -q -- "\`$opt\`" "$doc" || fail "docs/tool.md lacks $cmd's option $opt"
    done
  done
  ;;

success)
  make_w W.npy 64x128 f4 C
  expect_rc 0 init --input W.npy --output out --rank=8 --iters 4 --bits 4 --seed=7
  check_outputs out 64 128 8
  "$TOOL" report out/report.json 64 128 4 8 4 1 nf randomized || fail "report.json"
  "$TOOL" recon W.npy out || fail "reconstruction"
  grep -q 'QLoRA' "$out_file" || { show; fail "no summary on stdout"; }
  # .loftq-output marks a directory the tool published (what --overwrite may delete).
  [ "$(ls -A out | LC_ALL=C sort | tr '\n' ' ')" = ".loftq-output A.npy B.npy Q.npy report.json " ] || fail "out/ holds $(ls -A out)"
  [ "$(tree_listing | tr '\n' ' ')" = "./W.npy ./out ./out/.loftq-output ./out/A.npy ./out/B.npy ./out/Q.npy ./out/report.json " ] ||
    fail "stray files: $(tree_listing)"
  grep -q '"seed": 7' out/report.json || fail "seed not recorded"
  # --quiet prints nothing; nested missing parents are created.
  expect_rc 0 init --quiet --input W.npy --output a/b/c --rank 8 --iters 4 --seed 7
  [ ! -s "$out_file" ] || fail "--quiet printed something"
  for f in Q.npy A.npy B.npy; do cmp -s "out/$f" "a/b/c/$f" || fail "$f differs between identical runs"; done
  # A trailing slash names the same directory, not a child of it.
  expect_rc 0 init --quiet --input W.npy --output slash/ --rank 8
  check_outputs slash 64 128 8
  [ ! -e slash/.tmp ] && [ -z "$(ls -d slash.* 2>/dev/null)" ] || fail "temporary left behind"
  ;;

options)
  make_w W.npy 64x128 f4 C
  expect_rc 0 init --input W.npy --output u --quantizer uniform --bits 3 --block-size 32 --svd exact \
    --start svd --scale absmax --rank 4 --iters 3 --threads 1
  check_outputs u 64 128 4
  "$TOOL" report u/report.json 64 128 3 4 3 1 uniform exact || fail "report.json"
  "$TOOL" recon W.npy u || fail "reconstruction"
  grep -q '"block_size": 32' u/report.json || fail "block_size not recorded"
  grep -q '"start": "svd"' u/report.json || fail "start not recorded"
  grep -q '"threads": 1' u/report.json || fail "threads not recorded"
  # Any bit width 2..8 works; a rank of min(m, n) too.
  for b in 2 8; do
    expect_rc 0 init --quiet --input W.npy --output "b$b" --bits "$b" --rank 4 --iters 2
    check_outputs "b$b" 64 128 4
  done
  expect_rc 0 init --quiet --input W.npy --output full --rank 64 --iters 1 --svd exact
  check_outputs full 64 128 64
  ;;

last)
  make_w W.npy 64x128 f4 C
  expect_rc 0 init --input W.npy --output out --rank 8 --iters 6 --last
  check_outputs out 64 128 8
  "$TOOL" report out/report.json 64 128 4 8 6 0 nf randomized || fail "report.json"
  "$TOOL" recon W.npy out || fail "reconstruction"
  grep -q '"best_iteration": 6' out/report.json || fail "best_iteration != 6"
  ;;

dtypes)
  # float64 and Fortran order hold the same float32 values: same results.
  make_w W.npy 64x128 f4 C
  make_w WF.npy 64x128 f4 F
  make_w W8.npy 64x128 f8 C
  make_w W8F.npy 64x128 f8 F
  for w in W WF W8 W8F; do
    expect_rc 0 init --quiet --input "$w.npy" --output "o$w" --rank 8 --iters 3 --threads 1
    check_outputs "o$w" 64 128 8
  done
  for w in WF W8 W8F; do
    for f in Q.npy A.npy B.npy; do cmp -s "oW/$f" "o$w/$f" || fail "$f differs for $w.npy"; done
  done
  grep -q '"dtype": "float64"' oW8/report.json || fail "dtype not recorded"
  ;;

determinism)
  make_w W.npy 64x128 f4 C
  for svd in randomized exact; do
    expect_rc 0 init --quiet --input W.npy --output "t1$svd" --rank 8 --iters 4 --svd "$svd" --threads 1
    expect_rc 0 init --quiet --input W.npy --output "t2$svd" --rank 8 --iters 4 --svd "$svd" --threads 2
    for f in Q.npy A.npy B.npy; do cmp "t1$svd/$f" "t2$svd/$f" || fail "$f differs between --threads 1 and 2 ($svd)"; done
  done
  ;;

usage)
  make_w W.npy 64x128 f4 C
  expect_usage
  expect_usage frobnicate --input W.npy --output o
  expect_usage init
  expect_usage init --output o
  expect_usage init --input W.npy
  expect_usage init --input W.npy --output o --bogus 3
  expect_usage init --input W.npy --output o -r 3
  expect_usage init --input W.npy --output o extra
  expect_usage init --input W.npy --output o --rank abc
  expect_usage init --input W.npy --output o --rank 1.5
  expect_usage init --input W.npy --output o --rank -3
  expect_usage init --input W.npy --output o --rank +3
  expect_usage init --input W.npy --output o --rank " 3"
  expect_usage init --input W.npy --output o --rank 99999999999999999999
  expect_usage init --input W.npy --output o --rank 4294967297
  expect_usage init --input W.npy --output o --rank=
  expect_usage init --input W.npy --output o --rank
  expect_usage init --input W.npy --rank --output o
  expect_usage init --input W.npy --output o --rank 4 --rank 4
  expect_usage init --input W.npy --output o --rank 4 --rank=5
  expect_usage init --input W.npy --output o --last --last
  expect_usage init --input W.npy --output o --last=1
  expect_usage init --input W.npy --output o --rank 0
  expect_usage init --input W.npy --output o --iters 0
  expect_usage init --input W.npy --output o --block-size 0
  expect_usage init --input W.npy --output o --threads 0
  expect_usage init --input W.npy --output o --threads 100000
  expect_usage init --input W.npy --output o --bits abc
  expect_usage init --input W.npy --output o --bits -4
  expect_usage init --input W.npy --output o --seed 18446744073709551616
  expect_usage init --input W.npy --output o --seed -1
  expect_usage init --input W.npy --output o --quantizer nf4
  expect_usage init --input W.npy --output o --svd fast
  expect_usage init --input W.npy --output o --scale mean
  expect_usage init --input W.npy --output o --start random
  expect_usage init --input= --output o
  # Help and version: stdout, exit 0.
  for h in --help -h help; do
    expect_rc 0 "$h"
    grep -q 'usage: loftq init' "$out_file" || fail "$h: no usage on stdout"
  done
  expect_rc 0 init --help
  grep -q 'exit status' "$out_file" || fail "init --help: no usage on stdout"
  expect_rc 0 init --input W.npy -h
  expect_rc 0 --version
  grep -q '^loftq [0-9]' "$out_file" || fail "--version prints $(cat "$out_file")"
  [ "$(tree_listing | tr '\n' ' ')" = "./W.npy " ] || fail "stray files: $(tree_listing)"
  ;;

numeric_values)
  # Every option that takes a number (N, A, B, X or K/N in the help) follows
  # one rule: decimal digits (a fraction and an exponent where the value is
  # not a count), nothing around them. Anything else is a usage error (exit 2)
  # in one line naming the option, before any file is looked at.
  expect_rc 0 --help-markdown
  opts=$(awk '/^## loftq /{cmd=$3} /^\| `--[a-z-]+` \| `(N|A|B|X|K\/N)` \|/{gsub(/[`|]/, ""); print cmd "," $1 "," $2}' \
    "$out_file")
  for o in init,--bits init,--rank init,--iters init,--block-size init,--seed init,--threads model,--bits-budget \
    model,--lora-alpha model,--shard model,--calibration-damping calibrate,--threads; do
    grep -q "^$o," <<<"$opts" || fail "the help lists no numeric option $o (found: $(echo $opts))"
  done
  base() {
    case $1 in
      calibrate) echo "calibrate --input m --tokens t.npy --output o" ;;
      *) echo "$1 --input missing.bin --output o" ;;
    esac
  }
  # Every malformed form on one option of each kind, the commonest on all.
  all_forms=(" 8" "8 " $'\t8' "8abc" "0x8" "0X8" "nan" "NAN" "inf" "-inf" "infinity" "+8" "-8" "" "8," "8.0.0" "1e" "e3"
    "1e999999" "99999999999999999999999" $'8\n' $'\xef\xbc\x98' "8_0" "0b1")
  some_forms=(" 8" "8 " "8abc" "0x8" "nan" "inf" "+8" "-8" "" "1e999999")
  n=0
  while IFS=, read -r cmd opt kind; do
    case $cmd,$opt,$kind in
      init,--rank,*) bad=("${all_forms[@]}" "1e3" "1.5" "8." ".8") ;;
      model,--lora-alpha,*) bad=("${all_forms[@]}" "1e-999999") ;;
      *,K/N) bad=(" 1/2" "1/2 " "1/ 2" "0x1/2" "1/2abc" "1e0/2" "-1/2" "1/-2" "/2" "1/" "1/2/3" "+1/2" "3/2" "0/2") ;;
      *,N) bad=("${some_forms[@]}" "1e3") ;;
      *) bad=("${some_forms[@]}") ;;
    esac
    for v in "${bad[@]}"; do
      # shellcheck disable=SC2046
      run $(base "$cmd") "$opt=$v"
      [ "$rc" -eq 2 ] || { show; fail "$cmd $opt='$v': exit $rc, expected 2"; }
      [ "$(wc -l <"$err_file")" -eq 1 ] || { show; fail "$cmd $opt='$v': stderr is not one line"; }
      grep -q -- "$opt: invalid value" "$err_file" || { show; fail "$cmd $opt='$v': the message is not '$opt: invalid value ...'"; }
      n=$((n + 1))
    done
  done <<<"$opts"
  [ -z "$(tree_listing)" ] || fail "files created: $(tree_listing)"
  # The documented forms are accepted: the run gets as far as the missing input (exit 1).
  for ok in "--rank 08" "--seed 18446744073709551615" "--lora-alpha 1e3" "--lora-alpha 0.5" "--lora-alpha .5" \
    "--lora-alpha 1E+2" "--bits-budget 2.5" "--calibration-damping 0 --calibration c" "--shard 2/3"; do
    # shellcheck disable=SC2086
    expect_rc 1 model --input missing.bin --output o $ok
  done
  echo "$n malformed values refused"
  ;;

bad_input)
  make_w W.npy 64x128 f4 C
  make_w W3.npy 4x8x8 f4 C
  make_w Wi.npy 64x128 i4 C
  make_w Wnan.npy 64x128 f4 C nan
  make_w Winf.npy 64x128 f8 C inf
  make_w Wempty.npy 0x16 f4 C
  make_w Wvec.npy 128 f4 C
  head -c 1000 W.npy >Wtrunc.npy
  head -c 40 W.npy >Wshort.npy
  printf 'this is not an npy file at all\n' >Wgarbage.npy
  : >Wzero.npy
  mkdir Wdir.npy
  for o in o sub/dir/o; do
    for w in missing Wtrunc Wshort Wgarbage Wzero Wdir W3 Wvec Wi Wnan Winf Wempty; do
      expect_bad_input init --input "$w.npy" --output "$o"
    done
    expect_bad_input init --input W.npy --output "$o" --rank 65
    expect_bad_input init --input W.npy --output "$o" --bits 9
    expect_bad_input init --input W.npy --output "$o" --bits 1
    expect_bad_input init --input W.npy --output "$o" --bits 0
    expect_bad_input init --input W.npy --output "$o" --quantizer uniform --bits 9
  done
  # The same failures leave an existing output directory untouched.
  mkdir keep
  printf 'old Q\n' >keep/Q.npy
  printf 'unrelated\n' >keep/notes.txt
  expect_bad_input init --input Wnan.npy --output keep
  expect_bad_input init --input W.npy --output keep --rank 100
  [ "$(cat keep/Q.npy)" = "old Q" ] || fail "keep/Q.npy changed"
  ;;

magnitude)
  # Finite float32 values whose squares are not: the message names the cause.
  make_w H.npy 64x128 f4 C huge
  expect_refused 'input magnitude overflows float32' init --input H.npy --output o --rank 4 --iters 1
  # An Inf is the input's own value, not an overflow of sums.
  make_w I.npy 64x128 f4 C inf
  expect_refused 'I.npy: .*non-finite' init --input I.npy --output o --rank 4 --iters 1
  ;;

scale)
  # --scale absmax|search and --start zero|svd; defaults are the library's.
  make_w W.npy 64x128 f4 C
  get() { "$TOOL" get "$@" || fail "npytool get $*"; }
  expect_rc 0 init --quiet --input W.npy --output a --rank 8 --iters 3 --scale absmax --threads 1
  expect_rc 0 init --quiet --input W.npy --output s --rank 8 --iters 3 --scale search --threads 1
  [ "$(get a/report.json scale)" = absmax ] || fail "scale not recorded (absmax)"
  [ "$(get s/report.json scale)" = search ] || fail "scale not recorded (search)"
  for d in a s; do "$TOOL" recon W.npy "$d" || fail "reconstruction ($d)"; done
  ea=$(get a/report.json rel_err) es=$(get s/report.json rel_err)
  qa=$(get a/report.json qlora_rel_err) qs=$(get s/report.json qlora_rel_err)
  # Searched scales minimize each block's squared error with absmax among the
  # candidates: the plain quantization error cannot rise; LoftQ's final error
  # may move a little either way.
  awk -v a="$qa" -v s="$qs" 'BEGIN { exit !(s <= a * (1 + 1e-6)) }' || fail "search QLoRA error $qs > absmax $qa"
  awk -v a="$ea" -v s="$es" 'BEGIN { exit !(s <= a * 1.005) }' || fail "search LoftQ error $es > absmax $ea"
  # Without --scale / --start the report shows the defaults --help names.
  expect_rc 0 --help
  ds=$(sed -n 's/.*squared error (same storage) (default \(absmax\|search\))$/\1/p' "$out_file" | head -1)
  dz=$(sed -n 's/.*top-r SVD of W (default \(zero\|svd\))$/\1/p' "$out_file" | head -1)
  [ -n "$ds" ] && [ -n "$dz" ] || fail "--help names no default for --scale / --start"
  expect_rc 0 init --quiet --input W.npy --output d --rank 8 --iters 2
  [ "$(get d/report.json scale)" = "$ds" ] || fail "default scale is not the documented $ds"
  [ "$(get d/report.json start)" = "$dz" ] || fail "default start is not the documented $dz"
  # The reference-parity configuration still parses and is recorded as such.
  expect_rc 0 init --quiet --input W.npy --output ref --rank 8 --iters 2 --scale absmax --start zero --last --svd exact
  "$TOOL" report ref/report.json 64 128 4 8 2 0 nf exact || fail "report.json (reference parity)"
  [ "$(get ref/report.json scale)/$(get ref/report.json start)" = absmax/zero ] || fail "parity settings not recorded"
  expect_rc 0 init --quiet --input W.npy --output sv --rank 8 --iters 2 --start svd --scale search
  [ "$(get sv/report.json start)" = svd ] || fail "start not recorded"
  for bad in "--scale mean" "--scale=" "--scale ABSMAX" "--start random" "--start=" "--scale absmax --scale search"; do
    # shellcheck disable=SC2086
    expect_usage init --input W.npy --output o $bad
    [ "$(wc -l <"$err_file")" -eq 1 ] || { show $bad; fail "not a one-line message for $bad"; }
  done
  ;;

double_quant)
  make_w W.npy 64x128 f4 C
  get() { "$TOOL" get "$@" || fail "npytool get $*"; }
  expect_rc 0 init --input W.npy --output dq --rank 8 --iters 3 --double-quant --svd exact
  grep -q 'double quantization: 4.5000 -> ' "$out_file" || { show; fail "no double-quant summary"; }
  expect_rc 0 init --quiet --input W.npy --output plain --rank 8 --iters 3 --svd exact
  check_outputs dq 64 128 8
  "$TOOL" recon W.npy dq || fail "reconstruction with double quantization"
  # 64 x 128 at block 64: 128 scales -> 128 8-bit codes, one fp32 absmax, one fp32 mean.
  bpw=$(get dq/report.json bits_per_weight)
  awk -v b="$bpw" 'BEGIN { exit !(b == 4 + (8 * 128 + 32 + 32) / 8192) }' || fail "bits_per_weight $bpw"
  [ "$(get plain/report.json bits_per_weight)" = 4.5 ] || fail "plain bits_per_weight"
  [ "$(get dq/report.json double_quant/rel_err_before)" = "$(get plain/report.json rel_err)" ] ||
    fail "rel_err_before is not the plain run's error"
  [ "$(get plain/report.json double_quant)" = false ] || fail "double_quant not false without the flag"
  # The refit is no LoftQ iteration: 3 ran, and the history holds one more
  # entry, the error after the refit, which best_iteration points at.
  [ "$(get dq/report.json iterations_run)" = 3 ] || fail "iterations_run counts the double-quant refit"
  [ "$(get dq/report.json best_iteration)" = 4 ] || fail "best_iteration is not the refit's entry"
  e=$(get dq/report.json rel_err) r=$(get dq/report.json double_quant/rel_err_rounded_scales)
  awk -v e="$e" -v r="$r" 'BEGIN { exit !(e <= r) }' || fail "the refit raised the error ($r -> $e)"
  expect_usage init --input W.npy --output o --double-quant=1
  expect_usage init --input W.npy --output o --double-quant --double-quant
  ;;

*)
  fail "unknown case"
  ;;
esac
echo "PASS [$case_name]"
