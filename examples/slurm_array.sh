#!/bin/bash
# One sweep across a SLURM job array: every task runs its shard into one results directory on a
# shared file system; a last job rebuilds the combined files. Submit with
#   sbatch --array=1-8 examples/slurm_array.sh
# and, when the array has ended (or at any moment: it is safe while shards run),
#   marina collect /shared/results/figure1
#SBATCH --job-name=marina-figure1
#SBATCH --cpus-per-task=2
#SBATCH --time=02:00:00
#SBATCH --output=marina-%A_%a.log
set -euo pipefail
export OMP_WAIT_POLICY=PASSIVE
marina sweep examples/figure1.toml --out /shared/results/figure1 \
    --shard "$SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT" --jobs "$SLURM_CPUS_PER_TASK"
