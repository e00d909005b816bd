#!/bin/bash
# Submit a sharded curation run: a job array of SHARDS tasks (launchers/slurm/curate.sbatch) and a
# merge job that starts when every shard has succeeded (and is cancelled if one fails).
#
#   launchers/slurm/curate.sh OUT SHARDS -- --config configs/curate/720p.yaml --input videos.jsonl
#
# Environment: SBATCH_ARGS, extra sbatch options for both jobs (e.g. "--partition=cpu");
# WAIT=1 blocks until the merge job has ended and exits with its status.
set -euo pipefail
OUT=${1:?usage: curate.sh OUT SHARDS -- CURATE_ARGS...}
SHARDS=${2:?usage: curate.sh OUT SHARDS -- CURATE_ARGS...}
shift 2
[ "${1:-}" = "--" ] && shift
HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck disable=SC2086  # SBATCH_ARGS is a list of options
ARRAY=$(sbatch --parsable ${SBATCH_ARGS:-} --array="0-$((SHARDS - 1))" \
        "$HERE/curate.sbatch" "$OUT" -- "$@")
echo "megagoku curate: shards are job $ARRAY"
# shellcheck disable=SC2086
MERGE=$(sbatch --parsable ${SBATCH_ARGS:-} --dependency="afterok:$ARRAY" \
        --kill-on-invalid-dep=yes ${WAIT:+--wait} "$HERE/curate.sbatch" "$OUT" --merge -- "$@")
echo "megagoku curate: merge is job ${MERGE%%;*}"
