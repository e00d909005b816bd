# Sourced by the sbatch scripts: what they share about preemption. Slurm runs a copy of a batch
# script from its spool directory, so each script finds this file beside its original path
# (`scontrol show job`'s Command=) rather than beside itself.

# megagoku_wait PID: wait for the job step PID. A USR1 to the batch script (--signal=B:USR1@...,
# or `scancel --signal=USR1 --batch`) is passed on to the step: the ranks checkpoint and exit 75,
# and then the job is requeued (#SBATCH --requeue) and this script exits 0. Otherwise sets rc to
# the step's exit status.
megagoku_wait() {
    local step=$1
    # shellcheck disable=SC2064  # the PID is fixed now
    trap "echo 'megagoku: USR1 (preemption): asking the ranks to checkpoint'; kill -USR1 $step" USR1
    # `wait` returns early when the trap runs: wait again until the step has really ended.
    while :; do
        wait "$step"
        rc=$?
        kill -0 "$step" 2>/dev/null || break
    done
    if [ "$rc" -eq 75 ]; then  # checkpoint committed on a stop signal: run the job again
        echo "megagoku: checkpointed; requeueing job $SLURM_JOB_ID"
        scontrol requeue "$SLURM_JOB_ID"
        exit 0
    fi
}
