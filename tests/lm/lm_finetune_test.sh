#!/usr/bin/env bash
# Runs `lm_finetune --quick` and checks properties that hold whatever the
# exact numbers: at 2 bits every LoftQ initialization starts closer than
# QLoRA to the full-precision model and to the shifted teacher (held-out KL
# on both tasks), and fine-tuning lowers every method's held-out loss on both
# tasks (except full-precision LoRA on the recovery task, which starts at its
# optimum, KL 0, and must stay near it). The rows through the loftq program
# (loftq calibrate, then loftq model --calibration, read back) start where the
# in-process data-aware rows start: Q + s B A within 1e-4 of theirs, and the
# same initial KL to 1e-4 relative.
#
# usage: lm_finetune_test.sh LM_FINETUNE OUT_DIR MODEL
# Exit 77 (skip) when the checkpoint is absent.
set -euo pipefail
bin=$1 out=$2 model=$3
if [[ ! -f $model ]]; then
  echo "skipped: $model is absent"
  exit 77
fi
rm -rf "$out"
mkdir -p "$out"
set +e
"$bin" --quick --model "$model" --out "$out"
rc=$?
set -e
[[ $rc -eq 77 ]] && exit 77
[[ $rc -eq 0 ]] || { echo "lm_finetune failed with exit code $rc"; exit 1; }
summary=$out/summary.csv
[[ -s $summary ]] || { echo "no $summary"; exit 1; }
for f in curves.csv recovery_nf2_r8.svg shift_nf4_r8.svg; do
  [[ -s $out/$f ]] || { echo "missing $out/$f"; exit 1; }
done

# summary.csv: method,bits_group,avg_bits,rank,weight_error,task1_kl_init,task1_kl_final,task2_kl_init,task2_kl_final,
#   init_vs_data_aware
awk -F, '
  function abs(x) { return x < 0 ? -x : x }
  NR == 1 { next }
  { rows++; m[NR] = $1; g[NR] = $2; r[NR] = $4; ki[NR] = $6; kf[NR] = $7; ci[NR] = $8; cf[NR] = $9; dv[NR] = $10
    if ($1 == "qlora" && $2 == 2) { q2[$4] = $6; s2[$4] = $8 }
    if ($1 == "data_aware") da[$2 "/" $4] = $6 }
  END {
    bad = 0; loftq = 0; tool = 0
    for (i in m) {
      if (m[i] != "tool_data_aware") continue
      tool++
      key = g[i] "/" r[i]
      if (!(dv[i] >= 0 && dv[i] <= 1e-4)) { print "tool_data_aware (bits " g[i] ", rank " r[i] "): init differs from data_aware by " dv[i]; bad = 1 }
      if (!(key in da)) { print "no data_aware row at " key; bad = 1 }
      else if (!(abs(ki[i] - da[key]) <= 1e-4 * da[key])) { print "tool_data_aware (" key "): init KL " ki[i] " vs data_aware " da[key]; bad = 1 }
    }
    if (tool < 2) { print "expected the tool_data_aware rows at 2 and 4 bits, found " tool; bad = 1 }
    if (rows < 10) { print "too few rows: " rows; exit 1 }
    for (i in m) {
      if (m[i] != "fp_lora" && m[i] != "qlora" && (g[i] == 2 || g[i] == 0)) {
        loftq++
        if (!(r[i] in q2)) { print "no QLoRA row at rank " r[i]; bad = 1 }
        else {
          if (!(ki[i] < q2[r[i]])) { print m[i] " (bits " g[i] ", rank " r[i] "): init KL " ki[i] " >= QLoRA " q2[r[i]]; bad = 1 }
          if (!(ci[i] < s2[r[i]])) { print m[i] " (bits " g[i] ", rank " r[i] "): init shift KL " ci[i] " >= QLoRA " s2[r[i]]; bad = 1 }
        }
      }
      if (m[i] == "fp_lora") {
        if (!(kf[i] < 0.05)) { print "fp_lora drifted to KL " kf[i]; bad = 1 }
      } else if (!(kf[i] < ki[i])) { print m[i] " (bits " g[i] ", rank " r[i] "): recovery KL " ki[i] " -> " kf[i]; bad = 1 }
      if (!(cf[i] < ci[i])) { print m[i] " (bits " g[i] ", rank " r[i] "): shift KL " ci[i] " -> " cf[i]; bad = 1 }
    }
    if (loftq < 6) { print "expected the LoftQ variants at 2 bits, found " loftq; bad = 1 }
    if (bad) exit 1
    print "ok: " rows " methods checked"
  }' "$summary"
