#!/bin/bash
# Submits `loftq model` as an N-task Slurm array plus a merge that runs once
# every task has succeeded, and prints the two job ids.
#
#   examples/slurm/submit.sh N CHECKPOINT OUT FINAL [loftq model options]
#
# Extra sbatch options (partition, account, time limit) go in SBATCH_ARGS,
# e.g. SBATCH_ARGS="--partition=cpu --time=01:00:00". The array's and the
# merge's working directory is the current one; their logs land there.
set -euo pipefail
[ $# -ge 4 ] || { echo "usage: $0 N CHECKPOINT OUT FINAL [loftq model options]" >&2; exit 2; }
n=$1 ckpt=$2 out=$3 final=$4
shift 4
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$out"
# shellcheck disable=SC2086  # SBATCH_ARGS is a list of options
array=$(sbatch --parsable ${SBATCH_ARGS:-} --array="1-$n" "$here/loftq_array.sbatch" "$ckpt" "$out" "$@")
array=${array%%;*}  # --parsable prints JOBID[;CLUSTER]
# shellcheck disable=SC2086
merge=$(sbatch --parsable ${SBATCH_ARGS:-} --dependency="afterok:$array" --kill-on-invalid-dep=yes \
  "$here/loftq_merge.sbatch" "$ckpt" "$out" "$n" "$final")
echo "array job ${array}, merge job ${merge%%;*}"
