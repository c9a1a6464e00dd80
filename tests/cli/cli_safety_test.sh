#!/usr/bin/env bash
# Tests of what the loftq tool must never do with its outputs and inputs,
# whatever the paths, other runs or signals: overwrite an input, publish a
# mixed set, or leave staging behind. One case per CTest test, as cli_test.sh:
#
#   bash cli_safety_test.sh CASE /path/to/loftq /path/to/npytool WORKDIR
#
# WORKDIR is wiped and rebuilt; every input is made here by npytool or printf.
set -u

# shellcheck source=../support/cli_helpers.sh
source "$(dirname "$0")/../support/cli_helpers.sh"
setup_script npytool "$@"

case "$case_name" in

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
  # An input under another name in the output directory is refused as any
  # other file there: the directory is replaced whole.
  rm out/Q.npy
  cp W.npy out/W.npy
  expect_refused "out: holds 'W.npy'" init --input out/W.npy --output out --rank 8 --iters 2
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

existing_dir)
  # init replaces its set only by swapping the whole directory, so it
  # refuses, before any work and changing nothing, a directory that holds
  # anything else, or files of its names without the marker of its output.
  make_w W.npy 64x128 f4 C
  mkdir out
  printf 'old\n' >out/Q.npy
  printf 'old\n' >out/report.json
  printf 'unrelated\n' >out/notes.txt
  expect_refused "out: holds 'notes.txt', not a file init writes.*mixed set" init --input W.npy --output out --rank 8
  mkdir sub
  printf 'x\n' >sub/A.npy
  expect_refused "sub: not an earlier init's output" init --input W.npy --output sub --rank 8
  # A directory inside it, or a mount point of its own, is refused as well.
  rm sub/A.npy
  mkdir sub/keep
  expect_refused "sub: holds 'keep'" init --input W.npy --output sub --rank 8
  rm -r out sub
  # An empty directory takes the set; rerunning over it replaces the set.
  mkdir out
  expect_rc 0 init --quiet --input W.npy --output out --rank 8 --iters 3
  check_outputs out 64 128 8
  "$TOOL" report out/report.json 64 128 4 8 3 1 nf randomized || fail "report.json"
  expect_rc 0 init --quiet --input W.npy --output out --rank 4 --iters 2
  check_outputs out 64 128 4
  [ "$(ls -A out | LC_ALL=C sort | tr '\n' ' ')" = ".loftq-output A.npy B.npy Q.npy report.json " ] ||
    fail "out/ holds $(ls -A out)"
  [ -z "$(ls -d out.* 2>/dev/null)" ] || fail "temporary left behind"
  # A file put into the output is refused on the next run, which changes nothing.
  printf 'mine\n' >out/notes.txt
  expect_refused "out: holds 'notes.txt'" init --input W.npy --output out --rank 8
  # A symbolic link to an earlier output: the link would be replaced, not the directory.
  rm out/notes.txt
  ln -s out lnk
  expect_refused "lnk: is a symbolic link" init --input W.npy --output lnk --rank 8
  ;;

init_publish_crash)
  # SIGKILL at each call an init into an earlier init's output makes to
  # publish, one point at a time, with and without RENAME_EXCHANGE
  # (kill_each_call): the exchange or the two renames, then the removal of
  # the previous set. out holds the previous set or the new one, never a mix
  # (without the exchange it may be missing between the two renames, and the
  # next run finishes the publish), and the next run, even one that fails,
  # leaves nothing else behind.
  make_w W.npy 64x96 f4 C
  expect_rc 0 init --quiet --input W.npy --output ref_old --rank 4 --iters 1
  expect_rc 0 init --quiet --input W.npy --output ref_new --rank 8 --iters 1
  RERUN=(init --quiet --input W.npy --output out --rank 65)
  points=0
  for mode in exchange fallback; do
    kill_each_call "$mode" "rename renameat2 link unlink unlinkat rmdir" 40 \
      init --quiet --input W.npy --output out --rank 8 --iters 1
  done
  [ "$points" -ge 12 ] || fail "only $points kill points reached"
  echo "$points kill points"
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

*)
  fail "unknown case"
  ;;
esac
echo "PASS [$case_name]"
