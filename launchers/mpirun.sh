#!/usr/bin/env bash
# megagoku under mpirun (OpenMPI or MPICH): ranks, sizes and local ranks come from MPI through
# mpi4py; rank 0's host is broadcast as the rendezvous address.
#
#   launchers/mpirun.sh NPROCS RUN_DIR -- train --config configs/tiny.yaml [--set ...]
#
# MPIRUN: the mpirun to use (default mpirun); MPIRUN_ARGS: extra options (hosts, bindings);
# MASTER_PORT: rendezvous port (default 29500); PYTHON (default python3).
set -euo pipefail
NP=${1:?usage: mpirun.sh NPROCS RUN_DIR -- COMMAND...}
RUN_DIR=${2:?usage: mpirun.sh NPROCS RUN_DIR -- COMMAND...}
shift 2
[ "${1:-}" = "--" ] && shift
export MASTER_PORT=${MASTER_PORT:-29500}
# shellcheck disable=SC2086  # MPIRUN_ARGS is a list of options
exec "${MPIRUN:-mpirun}" -n "$NP" ${MPIRUN_ARGS:-} "${PYTHON:-python3}" -m megagoku "$@" \
    --run-dir "$RUN_DIR" --resume auto
