#!/usr/bin/env bash
# Builds the libFuzzer targets with clang (-fsanitize=fuzzer,address,undefined)
# and runs each for a bounded time on its seed corpus in tests/fuzz/corpus/.
# Fails on any crash, leak, timeout or sanitizer report.
#
#   tests/fuzz/run.sh [target...]        (default: every fuzz_*.cpp here)
#   FUZZ_TOTAL_SECONDS=120  wall-clock budget of the run phase, shared by
#                     the targets (each gets TOTAL * FUZZ_JOBS / targets
#                     seconds, at least 10), so adding a target does not
#                     lengthen CI
#   FUZZ_SECONDS      seconds per target instead (overrides the total)
#   FUZZ_BUILD_DIR    where binaries, working corpora and logs go
#                     (default build/fuzz)
#   CXX_FUZZ          the clang++ to use (default clang++)
#   FUZZ_JOBS         targets built and run at once (default: nproc), each
#                     on a core of its own, so each still gets FUZZ_SECONDS
#                     of a whole core
#   FUZZ_BUILD_ONLY=1 build the targets and stop (a later run rebuilds only
#                     what a source or header is newer than)
#
# The checked-in corpus is only read: new inputs go to a working copy under
# FUZZ_BUILD_DIR, so a run never edits the tree. A crashing input is written
# to FUZZ_BUILD_DIR/<target>/ (crash-*, leak-*, timeout-*); to reproduce it,
# run the binary on that file. The summary prints each target's executions.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
total_seconds="${FUZZ_TOTAL_SECONDS:-120}"
out="${FUZZ_BUILD_DIR:-$root/build/fuzz}"
cxx="${CXX_FUZZ:-clang++}"
mkdir -p "$out/bin"

eigen_inc=""
for d in /usr/include/eigen3 /usr/local/include/eigen3; do
  [[ -d "$d" ]] && { eigen_inc="-I$d"; break; }
done

if [[ $# -gt 0 ]]; then
  targets=("$@")
else
  targets=()
  for f in "$here"/fuzz_*.cpp; do targets+=("$(basename "$f" .cpp)"); done
fi

flags=(-std=c++17 -O1 -g -fno-omit-frame-pointer
       -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all
       -Wall -Wextra -Werror -I"$root/include" -I"$root" $eigen_inc)

export ASAN_OPTIONS="detect_leaks=1:halt_on_error=1:abort_on_error=0:allocator_may_return_null=0"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1"

jobs="${FUZZ_JOBS:-$(nproc)}"
if [[ -n "${FUZZ_SECONDS:-}" ]]; then
  seconds="$FUZZ_SECONDS"
else
  seconds=$(( total_seconds * jobs / ${#targets[@]} ))
  (( seconds >= 10 )) || seconds=10
fi

# fuzz_cli_args and fuzz_json_inputs link part of the tool (tools/loftq/)
# as a library, built once before the targets with the same flags minus
# -fsanitize=fuzzer (which would add a second main), plus CLI11's headers
# (libcli11-dev). The tool includes the project's common/ headers as
# "common/....hpp", hence -I"$root".
tool_dir="$root/tools/loftq"
tool_flags=("${flags[@]/-fsanitize=fuzzer,address,undefined/-fsanitize=fuzzer-no-link,address,undefined}")
tool_lib="$out/bin/libloftq_cli_options.a"

build_tool_lib() {
  local units=("$tool_dir"/{options,command_table,option_table,option_checks,help,staged_output,staging_files,interrupt,path_safety,report,cmd_init,checkpoint_plan}.cpp)
  local objs=() o pids=() status=0 b i
  mkdir -p "$out/tool"
  # Only what the targets call: the parser and `init` (fuzz_cli_args), the
  # shard-report checks (fuzz_json_inputs); cmd_model.cpp and cmd_merge.cpp
  # would double the build under the sanitizers. Compiled as $jobs unity
  # batches, as CMake's LOFTQ_UNITY_TOOL does: the units share CLI11, JSON and
  # Eigen, which one batch parses once.
  for ((b = 0; b < jobs; b++)); do
    o="$out/tool/unity_$b.o"
    objs+=("$o")
    for ((i = b; i < ${#units[@]}; i += jobs)); do echo "#include \"${units[$i]}\""; done > "$out/tool/unity_$b.cpp"
    if [[ ! -f "$o" ]] || [[ -n "$(find "$tool_dir" "$root/include" "$root/common" -newer "$o" -print -quit)" ]]; then
      "$cxx" "${tool_flags[@]}" -c "$out/tool/unity_$b.cpp" -o "$o" &
      pids+=($!)
    fi
  done
  for p in "${pids[@]}"; do wait "$p" || status=1; done
  [[ $status -eq 0 ]] || return 1
  rm -f "$tool_lib"
  ar rcs "$tool_lib" "${objs[@]}"
}

# Builds one target, only when its source or a header is newer than the binary.
build() {
  local t="$1" src="$here/$1.cpp" bin="$out/bin/$1" extra=()
  if [[ "$t" == fuzz_cli_args || "$t" == fuzz_json_inputs ]]; then
    extra=(-I"$tool_dir" "$tool_lib")
  fi
  if [[ ! -x "$bin" ]] || [[ -n "$(find "$src" "$here"/*.hpp "$root/include" "$root/tools" -newer "$bin" -print -quit)" ]]; then
    "$cxx" "${flags[@]}" "$src" "${extra[@]}" -o "$bin" >> "$out/$t.build.log" 2>&1 || { cat "$out/$t.build.log"; return 1; }
  fi
}

# Runs one target for $seconds; writes its verdict to $out/$t.result.
run() {
  local t="$1" bin="$out/bin/$1" work="$out/$1.corpus" log="$out/$1.log" seeds="$here/corpus/${1#fuzz_}"
  local corpus=() rc execs
  mkdir -p "$work" "$out/$t"
  [[ -d "$seeds" ]] && corpus+=("$seeds")
  set +e
  (cd "$out/$t" && "$bin" -max_total_time="$seconds" -timeout=25 -rss_limit_mb=2048 -max_len=4096 \
      -print_final_stats=1 -close_fd_mask=1 "$work" "${corpus[@]}") > "$log" 2>&1
  rc=$?
  set -e
  execs="$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)"
  if [[ $rc -ne 0 ]] || grep -qE 'ERROR: (AddressSanitizer|LeakSanitizer|libFuzzer)|runtime error:' "$log"; then
    echo "FAILED after ${execs:-?} executions (exit $rc)" > "$out/$t.result"
  else
    echo "ok, ${execs:-?} executions in ${seconds}s, corpus $(ls "$work" | wc -l) files" > "$out/$t.result"
  fi
}

# Runs "$1 target" for every target, at most $jobs at a time; fails if any did.
each() {
  local fn="$1" pids=() t status=0
  for t in "${targets[@]}"; do
    while [[ $(jobs -rp | wc -l) -ge $jobs ]]; do wait -n || status=1; done
    "$fn" "$t" &
    pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p" || status=1; done
  return $status
}

echo "== fuzz: building ${targets[*]} ($jobs at a time)"
if [[ " ${targets[*]} " == *" fuzz_cli_args "* || " ${targets[*]} " == *" fuzz_json_inputs "* ]]; then
  build_tool_lib > "$out/tool.build.log" 2>&1 || { cat "$out/tool.build.log"; exit 1; }
fi
each build
if [[ "${FUZZ_BUILD_ONLY:-0}" == 1 ]]; then
  echo "== fuzz: built ${#targets[@]} targets"
  exit 0
fi
echo "== fuzz: running each target for ${seconds}s ($jobs at a time)"
rm -f "$out"/*.result
each run

status=0
echo "== fuzz summary"
for t in "${targets[@]}"; do
  result="$(cat "$out/$t.result" 2>/dev/null || echo "FAILED: no result")"
  echo "   $t: $result"
  if [[ "$result" == FAILED* ]]; then
    status=1
    echo "== fuzz: $t failed; log follows"
    tail -n 60 "$out/$t.log"
    ls -1 "$out/$t" | sed 's/^/   artifact: /' || true
  fi
done
exit $status
