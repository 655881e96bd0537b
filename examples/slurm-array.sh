#!/bin/bash
# Convert a checkpoint on a shared file system in 8 parts with a Slurm job
# array; SLURM_ARRAY_TASK_ID (0..7) selects the part ("--shard auto/8").
# The finalize step runs as a dependent job once every task succeeded:
#
#   jid=$(sbatch --parsable examples/slurm-array.sh)
#   sbatch --dependency=afterok:$jid --wrap \
#     "qconv convert /models/llama-405b /models/llama-405b-nf4 --max-shard-size 5GB --finalize"
#
#SBATCH --job-name=qconv
#SBATCH --array=0-7
#SBATCH --cpus-per-task=16
#SBATCH --mem=4G
set -euo pipefail
exec qconv convert /models/llama-405b /models/llama-405b-nf4 \
  --max-shard-size 5GB --shard auto/8 --progress always
