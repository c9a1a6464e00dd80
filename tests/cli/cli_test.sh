#!/usr/bin/env bash
# Tests of the loftq command-line tool, one case per CTest test:
#
#   bash cli_test.sh CASE /path/to/loftq /path/to/npytool WORKDIR
#
# WORKDIR is wiped and rebuilt; every input is made here by npytool or printf.
set -u

# shellcheck source=../support/cli_helpers.sh
source "$(dirname "$0")/../support/cli_helpers.sh"
setup_case "$1" "$2" "$4"
TOOL=$3

make_w() { "$TOOL" make "$@" || fail "npytool make $*"; }

check_outputs() {  # DIR M N R
  "$TOOL" check "$1/Q.npy" "$2" "$3" || fail "Q.npy in $1"
  "$TOOL" check "$1/A.npy" "$2" "$4" || fail "A.npy in $1"
  "$TOOL" check "$1/B.npy" "$3" "$4" || fail "B.npy in $1"
  [ -f "$1/report.json" ] || fail "no report.json in $1"
}

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
    expect_bad_input init --input missing.npy --output "$o"
    expect_bad_input init --input Wtrunc.npy --output "$o"
    expect_bad_input init --input Wshort.npy --output "$o"
    expect_bad_input init --input Wgarbage.npy --output "$o"
    expect_bad_input init --input Wzero.npy --output "$o"
    expect_bad_input init --input Wdir.npy --output "$o"
    expect_bad_input init --input W3.npy --output "$o"
    expect_bad_input init --input Wvec.npy --output "$o"
    expect_bad_input init --input Wi.npy --output "$o"
    expect_bad_input init --input Wnan.npy --output "$o"
    expect_bad_input init --input Winf.npy --output "$o"
    expect_bad_input init --input Wempty.npy --output "$o"
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

stdin_pipe)
  make_w W.npy 32x64 f4 C
  # The pipeline's last command runs in a subshell: a failure there exits it.
  cat W.npy | expect_rc 0 init --quiet --input /dev/stdin --output out --rank 4 --iters 2 || exit 1
  check_outputs out 32 64 4
  # Endless data after a valid image is refused as soon as one byte too many
  # arrives, not buffered until memory runs out.
  # The marker goes next to WORK, where the tree listings do not see it.
  rm -f "$WORK.drained"
  { cat W.npy; head -c 1000000000 /dev/zero && : >"$WORK.drained"; } 2>/dev/null |
    expect_bad_input init --quiet --input /dev/stdin --output o2 || exit 1
  grep -q 'trailing bytes' "$err_file" || fail "no 'trailing bytes' in: $(cat "$err_file")"
  [ ! -e "$WORK.drained" ] || fail "the tool read all the trailing data"
  ;;

output_is_file)
  make_w W.npy 64x128 f4 C
  printf 'precious\n' >taken
  cp taken taken.orig
  expect_bad_input init --input W.npy --output taken
  cmp -s taken taken.orig || fail "the file at --output changed"
  expect_bad_input init --input W.npy --output taken/sub
  # An output directory whose Q.npy is a directory cannot be published.
  mkdir -p d/Q.npy
  expect_bad_input init --input W.npy --output d
  # --output naming the input file itself.
  cp W.npy W.orig
  expect_bad_input init --input W.npy --output W.npy
  cmp -s W.npy W.orig || fail "input changed"
  # A name with no room for the staging suffix is refused before any work,
  # naming the user's path rather than a staging one.
  long=$(printf 'x%.0s' $(seq 240))
  expect_refused "$long: output name is too long" init --input W.npy --output "$long"
  expect_refused "$long: output name is too long" init --input W.npy --output "sub/$long"
  ;;

input_is_output)
  make_w W.npy 64x128 f4 C
  mkdir out
  cp W.npy out/Q.npy
  cp W.npy orig.npy
  expect_bad_input init --input out/Q.npy --output out
  expect_bad_input init --input out/Q.npy --output ./out/
  expect_bad_input init --input ./out/../out/Q.npy --output out
  cmp -s out/Q.npy orig.npy || fail "input out/Q.npy changed"
  # Through a symbolic link and a hard link.
  ln -s out/Q.npy link.npy
  expect_bad_input init --input link.npy --output out
  ln out/Q.npy hard.npy
  expect_bad_input init --input hard.npy --output out
  mkdir out2
  ln -s ../W.npy out2/B.npy
  expect_bad_input init --input W.npy --output out2
  cmp -s out/Q.npy orig.npy || fail "input changed"
  cmp -s W.npy orig.npy || fail "W.npy changed"
  # Other names in the output directory are fine inputs.
  cp W.npy out/W.npy
  expect_rc 0 init --quiet --input out/W.npy --output out --rank 8 --iters 2
  check_outputs out 64 128 8
  cmp -s out/W.npy orig.npy || fail "input out/W.npy changed"
  ;;

resolved_paths)
  # The output is resolved as the OS resolves it: '..' after a missing
  # directory names nothing (not its parent), after an existing one it is
  # the parent of the directory it really is.
  make_w W.npy 32x64 f4 C
  mkdir sb
  printf 'keep\n' >sb/keep
  expect_refused 'sb/nope does not exist' init --input W.npy --output sb/nope/.. --rank 4 --iters 1
  mkdir -p real/d
  ln -s real/d ld
  expect_rc 0 init --quiet --input W.npy --output ld/../o --rank 4 --iters 1
  check_outputs real/o 32 64 4
  [ ! -e o ] || fail "ld/.. resolved as text"
  # An output file through a link to the input is refused.
  mkdir out
  ln -s ../W.npy out/Q.npy
  expect_refused 'the input file is an output path' init --input W.npy --output out --rank 4 --iters 1
  ;;

concurrent)
  # Runs into one output at the same time: whatever the interleaving, the
  # published set is one run's (Q, A, B and report.json together), and a run
  # that finds the output created by another meanwhile fails with one line.
  make_w W.npy 96x128 f4 C
  for seed in 1 2; do
    expect_rc 0 init --quiet --input W.npy --output "ref$seed" --rank 8 --iters 3 --seed "$seed"
  done
  cmp -s ref1/A.npy ref2/A.npy && fail "the seeds give the same A; nothing to tell the runs apart"
  sum_of() { cat "$1/Q.npy" "$1/A.npy" "$1/B.npy" | sha256sum | cut -d' ' -f1; }
  s1=$(sum_of ref1) s2=$(sum_of ref2)
  mkdir shared
  for round in 1 2 3 4 5 6; do
    for seed in 1 2; do
      "$LOFTQ" init --quiet --input W.npy --output shared --rank 8 --iters 3 --seed "$seed" 2>"err$seed" &
    done
    wait
    got=$(sum_of shared)
    if [ "$got" = "$s1" ]; then want=1; elif [ "$got" = "$s2" ]; then want=2; else fail "round $round: Q, A and B mix two runs"; fi
    grep -q "\"seed\": *$want[,}]" shared/report.json || fail "round $round: report.json is not from the run that wrote Q, A and B"
    [ -z "$(ls -A shared | grep -v -e '^Q.npy$' -e '^A.npy$' -e '^B.npy$' -e '^report.json$' -e '^.loftq-output$')" ] ||
      fail "round $round: left in the output: $(ls -A shared)"
  done
  for round in 1 2 3; do
    rm -rf fresh
    "$LOFTQ" init --quiet --input W.npy --output fresh --rank 8 --iters 3 --seed 1 2>err1 & p1=$!
    "$LOFTQ" init --quiet --input W.npy --output fresh --rank 8 --iters 3 --seed 2 2>err2 & p2=$!
    wait "$p1"; r1=$?
    wait "$p2"; r2=$?
    case "$(sum_of fresh)" in "$s1"|"$s2") ;; *) fail "round $round: a new output mixes two runs" ;; esac
    for k in 1 2; do
      rc=$([ "$k" = 1 ] && echo "$r1" || echo "$r2")
      [ "$rc" -eq 0 ] || { [ "$rc" -eq 1 ] && [ "$(wc -l <"err$k")" -eq 1 ]; } || fail "round $round: run $k exit $rc: $(cat "err$k")"
    done
    [ -z "$(ls -d fresh.tmp-* 2>/dev/null)" ] || fail "round $round: staging left behind"
  done
  ;;

stale_staging)
  # A staging directory of a process that no longer runs is removed by the
  # next run for the same output, when it carries the marker; others stay.
  make_w W.npy 32x64 f4 C
  sh -c 'exit 0' &
  dead=$!
  wait "$dead"
  for d in "out.tmp-$dead-0" "out.tmp-$$-0"; do
    mkdir -p "$d"
    : >"$d/.loftq-output"
    printf 'partial\n' >"$d/Q.npy"
  done
  mkdir "out.tmp-$dead-1"
  printf 'not ours\n' >"out.tmp-$dead-1/notes"
  expect_rc 0 init --quiet --input W.npy --output out --rank 4 --iters 1
  [ ! -e "out.tmp-$dead-0" ] || fail "the stale staging directory is still there"
  [ -e "out.tmp-$$-0" ] || fail "the staging directory of a live process was removed"
  [ -e "out.tmp-$dead-1/notes" ] || fail "a directory without the marker was removed"
  mkdir -p "out/.loftq-tmp-$dead-0"
  : >"out/.loftq-tmp-$dead-0/.loftq-output"
  expect_rc 0 init --quiet --input W.npy --output out --rank 4 --iters 1
  [ ! -e "out/.loftq-tmp-$dead-0" ] || fail "the stale staging directory inside out/ is still there"
  check_outputs out 32 64 4
  ;;

magnitude)
  # Finite float32 values whose squares are not: the message names the cause.
  make_w H.npy 64x128 f4 C huge
  expect_refused 'input magnitude overflows float32' init --input H.npy --output o --rank 4 --iters 1
  # An Inf is the input's own value, not an overflow of sums.
  make_w I.npy 64x128 f4 C inf
  expect_refused 'I.npy: .*non-finite' init --input I.npy --output o --rank 4 --iters 1
  ;;

existing_dir)
  make_w W.npy 64x128 f4 C
  mkdir out
  printf 'old\n' >out/Q.npy
  printf 'old\n' >out/report.json
  printf 'unrelated\n' >out/notes.txt
  expect_rc 0 init --quiet --input W.npy --output out --rank 8 --iters 3
  check_outputs out 64 128 8
  "$TOOL" report out/report.json 64 128 4 8 3 1 nf randomized || fail "report.json"
  [ "$(cat out/notes.txt)" = "unrelated" ] || fail "unrelated file changed"
  [ "$(ls -A out | LC_ALL=C sort | tr '\n' ' ')" = "A.npy B.npy Q.npy notes.txt report.json " ] ||
    fail "out/ holds $(ls -A out)"
  # Rerunning over a previous result replaces it.
  expect_rc 0 init --quiet --input W.npy --output out --rank 4 --iters 2
  check_outputs out 64 128 4
  [ "$(ls -A out | wc -l)" -eq 5 ] || fail "out/ holds $(ls -A out)"
  [ -z "$(ls -d out.* 2>/dev/null)" ] || fail "temporary left behind"
  ;;

interrupt)
  # A run killed while it computes leaves nothing behind. If the machine is
  # so fast that the run finishes first, its output must be complete.
  make_w W.npy 768x768 f4 C
  for sig in INT TERM; do
    rm -rf out
    "$LOFTQ" init --quiet --input W.npy --output out --rank 32 --iters 400 --svd exact --threads 1 \
      >/dev/null 2>"$err_file" &
    pid=$!
    sleep 0.5
    kill -s "$sig" "$pid" 2>/dev/null
    wait "$pid"
    rc=$?
    if [ "$rc" -eq 0 ]; then
      check_outputs out 768 768 32
      echo "note: the run finished before SIG$sig arrived" >&2
    else
      [ "$rc" -eq 130 ] || fail "SIG$sig: exit status $rc, expected 130"
      [ ! -e out ] || fail "SIG$sig: output left behind"
    fi
    [ "$(tree_listing | grep -v '^./out' | tr '\n' ' ')" = "./W.npy " ] || fail "SIG$sig: stray files: $(tree_listing)"
  done
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
