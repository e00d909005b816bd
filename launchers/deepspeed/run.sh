#!/usr/bin/env bash
# megagoku under DeepSpeed's launcher: one node (NUM_GPUS processes) or several (a hostfile, as
# launchers/deepspeed/hostfile.example; DeepSpeed reaches the hosts over pdsh/ssh).
#
#   NUM_GPUS=8 launchers/deepspeed/run.sh RUN_DIR -- train --config configs/goku_2b.yaml
#   HOSTFILE=hosts launchers/deepspeed/run.sh RUN_DIR -- train --config configs/goku_8b.yaml
#
# DEEPSPEED: the launcher (default deepspeed); MASTER_PORT (default 29500); MASTER_ADDR (several
# nodes: default, DeepSpeed asks the first host over ssh). On a CPU machine NUM_GPUS=2 starts two
# CPU ranks.
set -euo pipefail
RUN_DIR=${1:?usage: run.sh RUN_DIR -- COMMAND...}
shift
[ "${1:-}" = "--" ] && shift
OPTS=()
[ -n "${HOSTFILE:-}" ] && OPTS+=(--hostfile "$HOSTFILE")
[ -n "${NUM_GPUS:-}" ] && OPTS+=(--num_gpus "$NUM_GPUS")
[ -n "${MASTER_ADDR:-}" ] && OPTS+=(--master_addr "$MASTER_ADDR")
ARGS=("$@" --run-dir "$RUN_DIR" --resume auto)
if [ -n "${HOSTFILE:-}" ]; then
    # Several nodes: DeepSpeed's pdsh runner joins the arguments into one string for each node's
    # shell, quoting only those with a space, in double quotes: a `$(...)`, a backtick or a quote
    # in a --set value would run or break on every node. The nodes get the whole argv as one
    # inert word instead (NUL-separated, base64; megagoku/launch/argv.py decodes it).
    ARGS=("--argv-base64=$(printf '%s\0' "${ARGS[@]}" | base64 -w0)")
fi
exec "${DEEPSPEED:-deepspeed}" "${OPTS[@]}" --master_port "${MASTER_PORT:-29500}" \
    --module megagoku "${ARGS[@]}"
