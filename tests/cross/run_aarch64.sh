#!/usr/bin/env bash
# Cross-compiles the kernel-facing tests for AArch64 (Debian's
# g++-aarch64-linux-gnu; Eigen's and doctest's headers are
# architecture-independent) and runs them under qemu-aarch64, where the NEON
# kernels are the detected path: test_dispatch checks them bit for bit
# against the portable loops, the others against their own references.
#
#   bash tests/cross/run_aarch64.sh [build dir]    (default: build/aarch64)
#
# To keep it to a few minutes on two cores: -O1; the heavy float and double
# instantiations compiled once (src/instances_*.cpp, LOFTQ_EXTERN_TEMPLATES,
# as the native build does); no real-weight data (those cases skip); and
# test_initialize without its three slowest cases under emulation (the
# 1- vs 2-thread identity, which test_dispatch checks on the NEON path too,
# the comparison with the exact SVD, and the warm power-iteration sweep),
# about two minutes of emulated time between them. Speed under emulation
# means nothing. The cross compiler's package brings libgomp for arm64, so
# OpenMP is on.
set -euo pipefail
src=$(cd "$(dirname "$0")/../.." && pwd)
out=${1:-$src/build/aarch64}
cxx=${CXX_AARCH64:-aarch64-linux-gnu-g++}
sysroot=${QEMU_LD_PREFIX:-/usr/aarch64-linux-gnu}
tests=(test_dispatch test_quantizer test_svd test_initialize)
declare -A skip=(
  [test_initialize]="bit-identical for 1 and 2 threads,randomized SVD stays within 0.5% of exact,warm_power_iterations*"
)

mkdir -p "$out/include"
# doctest's headers without the rest of the host's /usr/include.
ln -sfn /usr/include/doctest "$out/include/doctest"
flags=(-std=c++17 -O1 -fopenmp -Wall -Wextra -Wpedantic -Werror -I"$src/include" -I"$src/tests" -I"$src"
       -isystem /usr/include/eigen3 -isystem "$out/include" -DLOFTQ_SHARED_DATA_DIR="\"$out/no-shared-data\"")

start=$(date +%s)
printf '%s\n' tests/main src/instances_float src/instances_double |
  xargs -P "$(nproc)" -I{} sh -c '"$0" "$@" -c "'"$src"'/{}.cpp" -o "'"$out"'/$(basename {}).o"' "$cxx" "${flags[@]}"
printf '%s\n' "${tests[@]}" |
  xargs -P "$(nproc)" -I{} "$cxx" "${flags[@]}" -DLOFTQ_EXTERN_TEMPLATES "$src/tests/{}.cpp" "$out/main.o" \
    "$out/instances_float.o" "$out/instances_double.o" -o "$out/{}"
built=$(date +%s)
echo "aarch64: compiled ${#tests[@]} tests in $((built - start)) s"

export QEMU_LD_PREFIX=$sysroot
for t in "${tests[@]}"; do
  echo "== $t (qemu-aarch64)"
  if ! qemu-aarch64 "$out/$t" --no-version --test-case-exclude="${skip[$t]:-}" >"$out/$t.log" 2>&1; then
    cat "$out/$t.log"
    exit 1
  fi
  tail -n 3 "$out/$t.log"
done
echo "aarch64: ran the tests in $(($(date +%s) - built)) s"
