#!/usr/bin/env bash
# Counts the AArch64 instructions loftq's operations execute, NEON kernels
# against the portable loops, under qemu-aarch64. Emulated time says nothing
# about real ARM hardware, and Debian 12's qemu 7.2 ships no TCG plugins, so
# the count comes from qemu's own log: `-d in_asm` prints each translated
# block's instructions once, `-d exec,nochain` a line per executed block
# (nochain: every execution, not only those entered from the dispatcher).
# The count is the sum over executed blocks of their length: user-space
# instructions of the process, the same figure `perf stat -e instructions:u`
# would give on hardware, without the kernel's.
#
#   bash bench/arm_instructions.sh [build dir]     (default: build/arm-count)
#   SIZES="quantize:1024x1024 ..." to change the cases (op:MxN)
#
# Each case runs bench/arm_kernels twice per path: the operation, and `none`
# (the same matrix, no operation), whose count is subtracted. One thread
# (OMP_NUM_THREADS=1), so the log is one instruction stream. Needs
# g++-aarch64-linux-gnu and qemu-user.
set -euo pipefail
src=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$src/build/arm-count}
cxx=${CXX_AARCH64:-aarch64-linux-gnu-g++}
export QEMU_LD_PREFIX=${QEMU_LD_PREFIX:-/usr/aarch64-linux-gnu}
read -r -a cases <<<"${SIZES:-quantize:512x512 search:512x512 svd:512x512 initialize:256x256}"
mkdir -p "$out"

# -O3 -DNDEBUG as CMake's Release build; no -march: NEON is part of the base architecture.
"$cxx" -std=c++17 -O3 -DNDEBUG -fopenmp -I"$src/include" -I"$src" -isystem /usr/include/eigen3 \
  "$src/bench/arm_kernels.cpp" -o "$out/arm_kernels"

# Prints the user-space instruction count of one run.
count() {
  qemu-aarch64 -d in_asm,exec,nochain -D /dev/fd/3 "$out/arm_kernels" "$@" 3>&1 1>"$out/last.txt" | python3 -c '
import re, sys
size, cur, total = {}, None, 0
ins = re.compile(r"0x([0-9a-f]+):\s")
for line in sys.stdin:
    if line.startswith("Trace "):
        # Trace 0: host [flags/PC/...]: the second field is the guest PC.
        total += size[int(line.split("[", 1)[1].split("/")[1], 16)]
    elif line.startswith("IN:"):
        cur = None
    else:
        m = ins.match(line)
        if m:
            pc = int(m.group(1), 16)
            if cur is None:
                cur = pc
                size[cur] = 0
            size[cur] += 1
print(total)'
}

export OMP_NUM_THREADS=1
# The method checked against a count that needs no block lengths: with
# -singlestep every block is one instruction, so the executed-block lines
# are the instructions (too slow for the real cases). The two differ by a
# few dozen in a million (blocks qemu re-executes serially around atomics
# and system calls); anything past 0.01 % would mean the parse is wrong.
single=$(qemu-aarch64 -singlestep -d exec,nochain -D /dev/fd/3 "$out/arm_kernels" none 16 16 3>&1 1>/dev/null | grep -c '^Trace')
blocks=$(count none 16 16)
awk -v a="$blocks" -v b="$single" 'BEGIN { d = a - b; if (d < 0) d = -d; exit !(d * 10000 <= b) }' ||
  { echo "arm_instructions: block count $blocks, single-step count $single" >&2; exit 1; }
echo "counting checked on 'none 16 16': $blocks instructions from blocks, $single single-stepped"
echo
printf '| operation | size | NEON kernels | portable loops | portable / NEON |\n| --- | --- | --- | --- | --- |\n'
for c in "${cases[@]}"; do
  op=${c%%:*} shape=${c#*:} m=${c#*:} m=${m%x*} n=${c##*x}
  declare -A got=()
  for path in neon portable; do
    if [ "$path" = portable ]; then export LOFTQ_SIMD=portable; else unset LOFTQ_SIMD; fi
    base=$(count none "$m" "$n")
    full=$(count "$op" "$m" "$n")
    grep -q "simd $path" "$out/last.txt" || { echo "arm_instructions: expected the $path path: $(cat "$out/last.txt")" >&2; exit 1; }
    got[$path]=$((full - base))
  done
  unset LOFTQ_SIMD
  python3 -c "import sys; a, b = int(sys.argv[3]), int(sys.argv[4]); print(f'| {sys.argv[1]} | {sys.argv[2]} | {a:,} | {b:,} | {b / a:.2f} |')" \
    "$op" "$shape" "${got[neon]}" "${got[portable]}"
done
