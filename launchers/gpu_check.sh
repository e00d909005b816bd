#!/usr/bin/env bash
# The checks that need a GPU, in one pass (CI has none): build the CUDA kernels, test them
# against the float64 reference, benchmark them, train the tiny model on the GPU (bf16 autocast,
# fused kernels) and resume it from a mid-run checkpoint, benchmark checkpoint saves from GPU
# state (snapshot into pinned host memory), and time one training step of the 2B and 8B blocks
# against diffusers' Wan (`megagoku bench step`, MFU).
#
#   launchers/gpu_check.sh ENCODER_DIR [OUT_DIR]
#
# ENCODER_DIR: a local Hugging Face text encoder (the built-in one works when its package is
# installed: pass builtin:all-minilm-l6-v2). Logs and JSON go to OUT_DIR (default /tmp/gpu_check);
# each step's last lines are printed. Uses $PYTHON (default python3) with a CUDA torch and nvcc,
# and $CC/$CXX for the host code when set.
set -u
ENCODER=${1:?usage: launchers/gpu_check.sh ENCODER_DIR [OUT_DIR]}
OUT_DIR=${2:-/tmp/gpu_check}
PY=${PYTHON:-python3}
mkdir -p "$OUT_DIR"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
[ -z "${CUDA_HOME:-}" ] && [ -x /usr/local/cuda/bin/nvcc ] && export CUDA_HOME=/usr/local/cuda
SUMMARY="$OUT_DIR/summary.txt"
: >"$SUMMARY"

step() {  # step NAME SECONDS COMMAND...: run with a time limit, log to OUT_DIR/NAME.log
    local name=$1 limit=$2 start rc
    shift 2
    start=$(date +%s)
    timeout "$limit" "$@" >"$OUT_DIR/$name.log" 2>&1
    rc=$?
    echo "== $name: rc=$rc in $(($(date +%s) - start)) s" | tee -a "$SUMMARY"
    tail -n "${TAIL:-12}" "$OUT_DIR/$name.log"
    return $rc
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$SUMMARY"
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$SUMMARY"
echo "compiler: $(${CXX:-c++} --version | head -1); torch built with: $($PY -c "import torch; print(torch.__config__.show())" | grep -o 'C++ Version: [^,]*' | head -1)" | tee -a "$SUMMARY"

step build 400 env TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}" MAX_JOBS="${MAX_JOBS:-16}" \
    $PY setup.py build_ext --inplace || exit 1
$PY -c "from megagoku.ops import fused; r = fused.unavailable_reason('cuda'); print('cuda kernels:', r or 'built'); raise SystemExit(r is not None)" \
    | tee -a "$SUMMARY" || exit 1

# Errors raised by the extension's checks must come back as Python exceptions, on both devices.
# Seen on one CUDA image: its compiler wrapper (/opt/gcc/bin/g++, set as CXX) linked pieces of
# libstdc++ into the extension, and every check's message then crashed in std::ostream; the
# system compiler (CC=/usr/bin/gcc CXX=/usr/bin/g++) builds one that raises properly.
step exception_probe 60 $PY -X faulthandler -c "
import torch
from megagoku.ops import _C
for device in ('cpu', 'cuda'):
    x = torch.randn(4, 8, device=device)
    try:
        _C.rms_norm_forward(x, None, 1e-6, torch.empty(4, 9, device=device), torch.empty(4, device=device))
    except RuntimeError as e:
        print(device, 'check raised:', str(e)[:90])
" || echo "the extension crashes when it raises: rebuild it with the system compiler (CC/CXX)" \
    | tee -a "$SUMMARY"
# The GPU backend only: the simulated one (CI runs it) would spend the lent GPU's time on CPU work.
TAIL=25 step kernel_tests 300 $PY -X faulthandler -m pytest -q -p no:cacheprovider -rf \
    -k "not sim" tests/ops/test_fused_cuda.py
TAIL=20 step bench_kernels 240 $PY -m megagoku bench kernels --device cuda --json "$OUT_DIR/kernels.json"

# Train 300 steps with a checkpoint every 100, then resume a second run from step 100: on the
# GPU the resumed run repeats the same data, noise and RNG draws; its numbers differ from the
# first run's only by the GPU's non-deterministic reductions.
TRAIN=(--config configs/tiny.yaml --set "text.encoder=$ENCODER" --set train.steps=300
       --set checkpoint.every=100 --set train.log_every=25 --set train.max_minutes=4)
[ "$ENCODER" != builtin:all-minilm-l6-v2 ] && TRAIN+=(--set "model.text_dim=$($PY -c "from megagoku.models.text_encoder import encoder_width; print(encoder_width('$ENCODER'))")")
rm -rf /tmp/gpu_check_a /tmp/gpu_check_b
export CUDA_LAUNCH_BLOCKING=${CUDA_LAUNCH_BLOCKING:-1}  # a kernel error names its launch
TAIL=4 step train 300 $PY -m megagoku train "${TRAIN[@]}" --run-dir /tmp/gpu_check_a
TAIL=4 step resume 300 $PY -m megagoku train "${TRAIN[@]}" --run-dir /tmp/gpu_check_b \
    --resume /tmp/gpu_check_a/checkpoints/step_00000100
$PY - <<'EOF' 2>&1 | tee -a "$SUMMARY"
import json
from pathlib import Path
from safetensors.torch import load_file

def last(run):
    ckpt = Path(run) / "checkpoints" / "step_00000300"
    return {k: v.float() for f in sorted(ckpt.glob("*.safetensors")) for k, v in load_file(f).items()}

def losses(run):
    return {r["step"]: r["loss"] for r in map(json.loads, open(Path(run) / "metrics.jsonl"))}

try:
    a, b = last("/tmp/gpu_check_a"), last("/tmp/gpu_check_b")
    worst = max((a[k] - b[k]).abs().max().item() / (a[k].abs().max().item() + 1e-12) for k in a)
    la, lb = losses("/tmp/gpu_check_a"), losses("/tmp/gpu_check_b")
    common = sorted(set(la) & set(lb))
    print(f"resume: {len(a)} tensors at step 300, largest difference relative to the tensor's "
          f"max {worst:.2e}; bit-identical: {all(a[k].equal(b[k]) for k in a)}")
    print("resume: loss (first run / resumed) " + ", ".join(f"{s}: {la[s]:.4f}/{lb[s]:.4f}"
                                                          for s in common[-4:]))
    first = json.loads(open("/tmp/gpu_check_a/metrics.jsonl").readlines()[-1])
    print(f"train: {first['steps_per_s']:.1f} step/s, {first['tokens_per_s']:.0f} tok/s, "
          f"checkpoint blocked {first.get('checkpoint_blocked_s', 0):.4f} s")
except Exception as e:  # report, do not stop the remaining checks
    print(f"resume comparison failed: {type(e).__name__}: {e}")
EOF

unset CUDA_LAUNCH_BLOCKING
[ "${SKIP_CHECKPOINT_BENCH:-0}" = 1 ] || TAIL=6 step bench_checkpoint 240 $PY -m megagoku bench checkpoint --device cuda --mb 400 --saves 3

# The model's speed (issue 20): one training step of the Goku-2B and Goku-8B blocks (depth cut to
# fit one GPU with AdamW state; MFU is per block stack) on a 32K-token pack of 8 mixed-length
# samples, bf16 autocast, flash-attn varlen when installed (the note after "megagoku:" names the
# attention that ran), against diffusers' Wan at the same size; then the 2B stack compiled.
# MFU is against the card's dense bf16 peak; the target is >= 40% for the 2B stack.
STEP=(bench step --tokens 32768 --samples 8 --mix mixed --dtype bf16 --device cuda --repeats 5
      --warmup 2)
$PY -c "import flash_attn" 2>/dev/null || echo "flash-attn is not installed: attention runs as sdpa_padded (pip install flash-attn)" | tee -a "$SUMMARY"
TAIL=8 step bench_step_2b 500 $PY -m megagoku "${STEP[@]}" --config configs/models/goku_2b.yaml \
    --set depth=4 --json "$OUT_DIR/step_2b.json"
TAIL=8 step bench_step_8b 500 $PY -m megagoku "${STEP[@]}" --config configs/models/goku_8b.yaml \
    --set depth=2 --json "$OUT_DIR/step_8b.json"
TAIL=8 step bench_step_2b_compiled 500 $PY -m megagoku "${STEP[@]}" \
    --config configs/models/goku_2b.yaml --set depth=4 --set compile=true --peer-compile \
    --json "$OUT_DIR/step_2b_compiled.json"
echo "== summary"; cat "$SUMMARY"
