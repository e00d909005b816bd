#!/usr/bin/env bash
# megagoku under DeepSpeed's launcher: one node (NUM_GPUS processes) or several (a hostfile, as
# launchers/deepspeed/hostfile.example; DeepSpeed reaches the hosts over pdsh/ssh).
#
#   NUM_GPUS=8 launchers/deepspeed/run.sh RUN_DIR -- train --config configs/goku_2b.yaml
#   HOSTFILE=hosts launchers/deepspeed/run.sh RUN_DIR -- train --config configs/goku_8b.yaml
#
# DEEPSPEED: the launcher (default deepspeed); MASTER_PORT (default 29500). On a CPU machine
# NUM_GPUS=2 starts two CPU ranks.
set -euo pipefail
RUN_DIR=${1:?usage: run.sh RUN_DIR -- COMMAND...}
shift
[ "${1:-}" = "--" ] && shift
OPTS=()
[ -n "${HOSTFILE:-}" ] && OPTS+=(--hostfile "$HOSTFILE")
[ -n "${NUM_GPUS:-}" ] && OPTS+=(--num_gpus "$NUM_GPUS")
exec "${DEEPSPEED:-deepspeed}" "${OPTS[@]}" --master_port "${MASTER_PORT:-29500}" \
    --module megagoku "$@" --run-dir "$RUN_DIR" --resume auto
