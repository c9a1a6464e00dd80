#!/usr/bin/env bash
# Builds bench/dispatch_consumer against the installed package twice, with no
# architecture flags and with -march=native, then times loftq::initialize
# (default Options: NF4, rank 16, T = 5) on a 4096x4096 realistic matrix in
# alternated pairs and prints the medians and their ratio.
#
#   bash bench/dispatch_consumer.sh [pairs] [m] [n] [reps per process]
#
# Defaults: 7 pairs, 4096 x 4096, 3 timed calls per process. Work files go to
# $WORK_DIR (default: a fresh temporary directory). LOFTQ_REV=<commit> installs
# the library's headers from that commit instead of the working tree (the
# consumer is always this one), to measure an older version the same way.
set -euo pipefail
pairs=${1:-7}
m=${2:-4096}
n=${3:-4096}
reps=${4:-3}
src=$(cd "$(dirname "$0")/.." && pwd)
work=${WORK_DIR:-$(mktemp -d)}
mkdir -p "$work"

lib=$src
if [ -n "${LOFTQ_REV:-}" ]; then
  lib=$work/loftq-src
  rm -rf "$lib" && mkdir -p "$lib"
  git -C "$src" archive "$LOFTQ_REV" | tar -x -C "$lib"
fi
cmake -S "$lib" -B "$work/loftq-build" -DCMAKE_INSTALL_PREFIX="$work/prefix" -DLOFTQ_BUILD_TESTS=OFF \
  -DLOFTQ_BUILD_TOOLS=OFF -DLOFTQ_BUILD_EXAMPLES=OFF -DLOFTQ_BUILD_BENCHMARKS=OFF -DLOFTQ_INSTALL=ON >/dev/null
cmake --install "$work/loftq-build" >/dev/null
for flavour in default native; do
  flags=""
  [ "$flavour" = native ] && flags="-march=native"
  cmake -S "$src/bench/dispatch_consumer" -B "$work/$flavour" -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_PREFIX_PATH="$work/prefix" -DCMAKE_CXX_FLAGS="$flags" >/dev/null
done
# The two builds are one translation unit each: compile them side by side.
cmake --build "$work/default" >/dev/null &
cmake --build "$work/native" >/dev/null
wait

: >"$work/times.txt"
for ((p = 0; p < pairs; ++p)); do
  for flavour in default native; do
    "$work/$flavour/dispatch_consumer" "$m" "$n" "$reps" | tee "$work/$flavour.last" |
      awk -v f="$flavour" -v p="$p" '$1 == "seconds" { print p, f, $2 }' >>"$work/times.txt"
  done
done
echo "default build: $(tail -1 "$work/default.last")"
echo "native build:  $(tail -1 "$work/native.last")"
echo "load average:  $(cut -d' ' -f1-3 /proc/loadavg)"
python3 - "$work/times.txt" "$m" "$n" "$pairs" "$reps" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
t = {f: [float(s) for p, g, s in rows if g == f] for f in ("default", "native")}
per_pair = []
for p in sorted({int(r[0]) for r in rows}):
    d = statistics.median(float(s) for q, g, s in rows if int(q) == p and g == "default")
    nat = statistics.median(float(s) for q, g, s in rows if int(q) == p and g == "native")
    per_pair.append(d / nat)
m, n, pairs, reps = sys.argv[2:]
print(f"\ninitialize {m}x{n}, default Options, {pairs} alternated pairs x {reps} calls")
print("| build | median s | min s | max s |")
print("| --- | --- | --- | --- |")
for f, label in (("default", "no architecture flags"), ("native", "-march=native")):
    print(f"| {label} | {statistics.median(t[f]):.3f} | {min(t[f]):.3f} | {max(t[f]):.3f} |")
print(f"\nratio of medians (default / native): {statistics.median(t['default']) / statistics.median(t['native']):.3f}")
print(f"median of per-pair ratios: {statistics.median(per_pair):.3f}")
PY
