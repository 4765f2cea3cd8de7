#!/bin/bash
#SBATCH --job-name=rf-job
#SBATCH --array=0-9%3
#SBATCH --output=/scratch/rf/jobs/0a1b/scheduler-%A_%a.log
#SBATCH --cpus-per-task=4
#SBATCH --mem=8192M
#SBATCH --time=1-12:00:00
#SBATCH --gres=gpu:1
#SBATCH --partition=short
#SBATCH --account=proj01
#SBATCH --exclusive
RF_JOB_DIR=/scratch/rf/jobs/0a1b
RF_TASK=${SLURM_ARRAY_TASK_ID:-0}
exec >"$RF_JOB_DIR"/task-$RF_TASK.stdout 2>"$RF_JOB_DIR"/task-$RF_TASK.stderr
rm -f "$RF_JOB_DIR"/task-$RF_TASK.exit
: >"$RF_JOB_DIR"/task-$RF_TASK.started
module load python/3.11
python3 /scratch/rf/worker.py /scratch/rf/jobs/0a1b --task "$RF_TASK"
rf_rc=$?
printf "%s\n" "$rf_rc" >"$RF_JOB_DIR"/task-$RF_TASK.exit.tmp && mv -f "$RF_JOB_DIR"/task-$RF_TASK.exit.tmp "$RF_JOB_DIR"/task-$RF_TASK.exit
exit "$rf_rc"
