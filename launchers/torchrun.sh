#!/usr/bin/env bash
# megagoku under plain torchrun (no heartbeats or restarts: `megagoku launch` adds those).
#
#   launchers/torchrun.sh NPROC_PER_NODE RUN_DIR -- train --config configs/tiny.yaml [--set ...]
#
# One node: nothing else. Several: run it on every node with NNODES=N and
# RDZV_ENDPOINT=<first node>:<port> (c10d rendezvous; RDZV_ID names the job, default megagoku).
# PYTHON: the interpreter with megagoku installed (default python3).
set -euo pipefail
NPROC=${1:?usage: torchrun.sh NPROC_PER_NODE RUN_DIR -- COMMAND...}
RUN_DIR=${2:?usage: torchrun.sh NPROC_PER_NODE RUN_DIR -- COMMAND...}
shift 2
[ "${1:-}" = "--" ] && shift
if [ "${NNODES:-1}" -gt 1 ]; then
    RDZV=(--nnodes "$NNODES" --rdzv-backend c10d --rdzv-endpoint "${RDZV_ENDPOINT:?set RDZV_ENDPOINT=host:port}"
          --rdzv-id "${RDZV_ID:-megagoku}")
else
    RDZV=(--standalone)
fi
exec "${PYTHON:-python3}" -m torch.distributed.run --nproc-per-node "$NPROC" "${RDZV[@]}" \
    -m megagoku "$@" --run-dir "$RUN_DIR" --resume auto
