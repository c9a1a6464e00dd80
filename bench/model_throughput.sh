#!/usr/bin/env bash
# Times `loftq model` on a LLaMA-2-7B-shaped BF16 checkpoint (make_checkpoint)
# and `loftq init` on the same shapes, alternated, and extrapolates to 32 layers.
#
#   bench/model_throughput.sh [BUILD_DIR] [LAYERS...]      (default: build/ci 2 4)
#
# Needs BUILD_DIR/bench/make_checkpoint, BUILD_DIR/tools/loftq,
# BUILD_DIR/tests/model/loftq_model_tool, /usr/bin/time and jq. Checkpoints go
# to $WORK (default /tmp/loftq-model-bench; about 1.3 GB per 2 layers plus
# 0.5 GB, and as much again for each output), kept for the next run.
# ROUNDS (default 3) alternated rounds of: model on each LAYERS checkpoint,
# init on a 4096x4096, an 11008x4096 and a 4096x11008 tensor of layer 0.
# Prints per round: wall, peak RSS, the report's per-tensor seconds (median per
# shape) against init's report.json seconds, and init's wall against its
# compute; then medians over rounds, and the 32-layer extrapolation
# wall(Lmax) + (32 - Lmax) * (wall(Lmax) - wall(Lmin)) / (Lmax - Lmin).
# Wall times follow the machine's load (printed per round); the CPU time
# (user + system, both cores) depends on it much less.
set -euo pipefail
BUILD=${1:-build/ci}
shift || true
LAYERS=("$@")
[ ${#LAYERS[@]} -gt 0 ] || LAYERS=(2 4)
WORK=${WORK:-/tmp/loftq-model-bench}
ROUNDS=${ROUNDS:-3}
GEN=$BUILD/bench/make_checkpoint LOFTQ=$BUILD/tools/loftq TOOL=$BUILD/tests/model/loftq_model_tool
for b in "$GEN" "$LOFTQ" "$TOOL" /usr/bin/time; do [ -x "$b" ] || { echo "model_throughput: $b not found (build it first)" >&2; exit 1; }; done
command -v jq >/dev/null || { echo "model_throughput: needs jq" >&2; exit 1; }
mkdir -p "$WORK"

for L in "${LAYERS[@]}"; do
  [ -f "$WORK/ck$L/model.safetensors.index.json" ] || "$GEN" "$WORK/ck$L" --layers "$L" --seed 1 2>/dev/null
done
ck=$WORK/ck${LAYERS[0]}
f=$(jq -r '.weight_map["model.layers.0.self_attn.q_proj.weight"]' "$ck/model.safetensors.index.json")
declare -A NPY=([4096x4096]=self_attn.q_proj [11008x4096]=mlp.gate_proj [4096x11008]=mlp.down_proj)
for s in "${!NPY[@]}"; do
  [ -f "$WORK/$s.npy" ] || "$TOOL" npy "$ck/$f" "model.layers.0.${NPY[$s]}.weight" "$WORK/$s.npy"
done

median() { sort -g | awk '{a[NR]=$1} END {print (NR % 2 ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2)}'; }
res=$WORK/results.txt
: > "$res"
for r in $(seq "$ROUNDS"); do
  for L in "${LAYERS[@]}"; do
    rm -rf "$WORK/out$L"
    /usr/bin/time -f "%e %M %U %S" -o "$WORK/time.txt" "$LOFTQ" model --input "$WORK/ck$L" --output "$WORK/out$L" --quiet
    read -r wall rss user sys < "$WORK/time.txt"
    echo "model $L wall $wall rss_mb $((rss / 1024)) cpu $(awk -v u="$user" -v s="$sys" 'BEGIN {print u + s}')" >> "$res"
    for s in "${!NPY[@]}"; do
      rows=${s%x*} cols=${s#*x}
      jq -r --argjson r "$rows" --argjson c "$cols" \
        '.tensors[] | select(.shape[0] == $r and .shape[1] == $c) | .seconds' "$WORK/out$L/loftq_report.json" |
        median | sed "s/^/model_tensor $L $s /" >> "$res"
    done
  done
  for s in "${!NPY[@]}"; do
    rm -rf "$WORK/init"
    # Wall from bash's microsecond clock (time's %e has 10 ms steps, 4 % of a
    # 4096x4096 run); it includes starting /usr/bin/time, about 1 ms.
    t0=$EPOCHREALTIME
    /usr/bin/time -f "%M" -o "$WORK/time.txt" "$LOFTQ" init --input "$WORK/$s.npy" --output "$WORK/init" --quiet
    t1=$EPOCHREALTIME
    wall=$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.4f", b - a}')
    read -r rss < "$WORK/time.txt"
    echo "init $s wall $wall compute $(jq .seconds "$WORK/init/report.json") rss_mb $((rss / 1024))" >> "$res"
  done
  echo "round $r: $(uptime | sed 's/.*load/load/')" >> "$res"
done
cat "$res"

echo
echo "medians over $ROUNDS rounds ($(nproc) cores):"
for L in "${LAYERS[@]}"; do
  w=$(awk -v L="$L" '$1 == "model" && $2 == L {print $4}' "$res" | median)
  m=$(awk -v L="$L" '$1 == "model" && $2 == L {print $6}' "$res" | median)
  c=$(awk -v L="$L" '$1 == "model" && $2 == L {print $8}' "$res" | median)
  echo "  model, $L layers: wall $w s, peak RSS $m MB, CPU (user + system) $c s"
  eval "wall_$L=$w"
done
for s in "${!NPY[@]}"; do
  i=$(awk -v s="$s" '$1 == "init" && $2 == s {print $6}' "$res" | median)
  iw=$(awk -v s="$s" '$1 == "init" && $2 == s {print $4}' "$res" | median)
  for L in "${LAYERS[@]}"; do
    t=$(awk -v L="$L" -v s="$s" '$1 == "model_tensor" && $2 == L && $3 == s {print $4}' "$res" | median)
    echo "  $s: model ($L layers) $t s per tensor, init $i s compute ($iw s wall): ratio $(awk -v a="$t" -v b="$i" 'BEGIN {printf "%.2f", a / b}'), init wall/compute $(awk -v a="$iw" -v b="$i" 'BEGIN {printf "%.2f", a / b}')"
  done
done
lo=${LAYERS[0]} hi=${LAYERS[${#LAYERS[@]}-1]}
if [ "$lo" != "$hi" ]; then
  wl=$(eval echo "\$wall_$lo") wh=$(eval echo "\$wall_$hi")
  # A layer's targets at init's speed: 4 of 4096x4096, 2 of 11008x4096, 1 of 4096x11008.
  sq=$(awk '$1 == "init" && $2 == "4096x4096" {print $6}' "$res" | median)
  up=$(awk '$1 == "init" && $2 == "11008x4096" {print $6}' "$res" | median)
  dn=$(awk '$1 == "init" && $2 == "4096x11008" {print $6}' "$res" | median)
  awk -v wl="$wl" -v wh="$wh" -v lo="$lo" -v hi="$hi" -v sq="$sq" -v up="$up" -v dn="$dn" 'BEGIN {
    per = (wh - wl) / (hi - lo); k = 4 * sq + 2 * up + dn
    printf "  per layer %.2f s wall, against %.2f s of init compute for its 7 targets: %.2fx\n", per, k, per / k
    printf "  32 layers extrapolated: %.0f s (%.2f min)\n", wh + (32 - hi) * per, (wh + (32 - hi) * per) / 60 }'
fi
