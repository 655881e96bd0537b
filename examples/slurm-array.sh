#!/bin/bash
# Convert a checkpoint on a shared file system in N parts with a Slurm job
# array: task I of --array=0-(N-1) converts part I of N of the output files
# ("--shard auto/N": qconv reads SLURM_ARRAY_TASK_ID, and N is the array's
# SLURM_ARRAY_TASK_COUNT, so it always matches --array). The finalize step
# runs as a dependent job once every task succeeded:
#
#   SRC=/models/llama-405b DST=/models/llama-405b-nf4 N=8 FLAGS="--max-shard-size 5GB"
#   jid=$(sbatch --parsable --array=0-$((N-1)) examples/slurm-array.sh "$SRC" "$DST" $FLAGS)
#   sbatch --parsable --dependency=afterok:$jid --wrap "qconv convert $SRC $DST $FLAGS --finalize"
#
# Arguments: SRC DST [qconv convert flags]; the finalize step needs the same
# flags. Without arguments SRC and DST come from the environment (sbatch
# passes it on), else the defaults below, and the flags are
# --max-shard-size 5GB. qconv must be on PATH on the compute nodes. A task
# that is rerun after a failure (--requeue, or resubmitted) keeps the files
# of its part that were finished and redoes the rest.
# scripts/slurm-e2e.sh runs this file, unchanged, on a one-node Slurm.
#
#SBATCH --job-name=qconv
#SBATCH --array=0-7
#SBATCH --cpus-per-task=16
#SBATCH --mem=4G
set -euo pipefail
src=${1:-${SRC:-/models/llama-405b}}
dst=${2:-${DST:-/models/llama-405b-nf4}}
shift $(($# < 2 ? $# : 2))
[ $# -gt 0 ] || set -- --max-shard-size 5GB
n=${SLURM_ARRAY_TASK_COUNT:?not an array task: submit with sbatch --array=0-N-1}
if [ "${SLURM_ARRAY_TASK_MIN:-}" != 0 ] || [ "${SLURM_ARRAY_TASK_MAX:-}" != $((n - 1)) ]; then
  echo "slurm-array.sh: --array must be 0-$((n - 1)) (one task per part), not ${SLURM_ARRAY_TASK_MIN:-?}-${SLURM_ARRAY_TASK_MAX:-?}" >&2
  exit 2
fi
exec qconv convert "$src" "$dst" "$@" --shard "auto/$n" --progress always
