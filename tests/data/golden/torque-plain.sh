#!/bin/bash
#PBS -N rf-job
#PBS -S /bin/bash
RF_JOB_DIR=/scratch/rf/jobs/0a1b
RF_TASK=${PBS_ARRAY_INDEX:-${PBS_ARRAYID:-${SLURM_ARRAY_TASK_ID:-0}}}
exec >"$RF_JOB_DIR"/task-$RF_TASK.stdout 2>"$RF_JOB_DIR"/task-$RF_TASK.stderr
rm -f "$RF_JOB_DIR"/task-$RF_TASK.exit
: >"$RF_JOB_DIR"/task-$RF_TASK.started
python3 /scratch/rf/worker.py /scratch/rf/jobs/0a1b --task "$RF_TASK"
rf_rc=$?
printf "%s\n" "$rf_rc" >"$RF_JOB_DIR"/task-$RF_TASK.exit.tmp && mv -f "$RF_JOB_DIR"/task-$RF_TASK.exit.tmp "$RF_JOB_DIR"/task-$RF_TASK.exit
exit "$rf_rc"
