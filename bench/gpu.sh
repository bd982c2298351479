#!/usr/bin/env bash
# bench/gpu.sh: the GPU smoke test and the bf16 step/eval benchmarks in one script (< 10 min, one H200).
#
# Assumes the project is installed in the active Python environment, from the repository root:
#   python -m pip install -e '.[test]'
# (torch with CUDA, transformers, peft; nothing is downloaded: the model is random, the data synthetic).
#
# Usage (from anywhere; paths are resolved from this file):
#   bash bench/gpu.sh                # GPU: random Qwen2-VL-2B, bf16, LoRA; 2 workers (torchrun,
#                                    # all-gathered loss) with 2+ GPUs, else 1 process; then a
#                                    # random Qwen2.5-VL-3B LoRA step (bf16, external fusion)
#   bash bench/gpu.sh --cpu-check    # the same pipeline on CPU: `test` presets, fp32, tiny sizes
# Environment:
#   OUT=DIR          where results go (default: bench/results/; --cpu-check: a temporary folder)
#   GPU_SH_NPROC=N   force the number of training processes (e.g. 2 with --cpu-check: gloo)
#   KEEP_WORK=1      keep the working folder (random model, data, run) instead of deleting it
#
# Stages: 1 random model, 2 synthetic data, 3 smoke training (amazon_qwen2vl.toml-shaped, 1 epoch),
# 4 bench/step.py, 5 bench/eval.py, 6 random Qwen2.5-VL-3B (the backbone a secondary summary of the
# paper reports), 7 bench/step.py on it (LoRA, external fusion). Results: gpu_smoke.json (stage
# wall times, losses, metrics, peak GPU memory, GPUs), step_<dtype>.json, eval_<dtype>.json and
# step_qwen2.5vl_<dtype>.json (bf16 on GPU, fp32 with --cpu-check).
set -euo pipefail

CALLER_PWD="$PWD" # a relative OUT is relative to where the script was started
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
MODE=gpu
for arg in "$@"; do
    case "$arg" in
        --cpu-check) MODE=cpu-check ;;
        -h | --help)
            sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d'
            exit 0
            ;;
        *)
            echo "bench/gpu.sh: unknown argument $arg (expected --cpu-check)" >&2
            exit 2
            ;;
    esac
done

PY="${PYTHON:-python}"
T_START=$(date +%s.%N)
WORK="$(mktemp -d "${TMPDIR:-/tmp}/vlm2rec-gpu-sh.XXXXXX")"
if [[ "${KEEP_WORK:-0}" == 1 ]]; then
    echo "working folder (kept): $WORK"
else
    trap 'rm -rf "$WORK"' EXIT
fi
STAGES="$WORK/stages.tsv"
: >"$STAGES"

banner() { printf '\n==== %s ====\n' "$*"; }
# stage NAME CMD...: banner, run, record the wall time in $STAGES
stage() {
    local name="$1"
    shift
    banner "$name"
    local t0 t1
    t0=$(date +%s.%N)
    "$@"
    t1=$(date +%s.%N)
    local secs
    secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')
    printf '%s\t%s\n' "$name" "$secs" >>"$STAGES"
    echo "---- $name: ${secs} s"
}

# ---- the machine -----------------------------------------------------------------------------
banner "machine ($MODE)"
"$PY" -c "import vlm2rec" 2>/dev/null || {
    echo "vlm2rec is not importable: run  python -m pip install -e '.[test]'  from $ROOT first" >&2
    exit 1
}
if [[ "$MODE" == gpu ]]; then
    if ! command -v nvidia-smi >/dev/null; then
        echo "nvidia-smi not found: no NVIDIA GPU here (use --cpu-check to test the script)" >&2
        exit 1
    fi
    nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv
    NGPU=$("$PY" -c "import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)")
    if [[ "$NGPU" -lt 1 ]]; then
        echo "nvidia-smi sees a GPU but torch does not (CPU-only torch build?)" >&2
        exit 1
    fi
    NPROC="${GPU_SH_NPROC:-$((NGPU >= 2 ? 2 : 1))}"
    DEVICE=cuda DTYPE=bf16 PRESET=2b PRESET25=2.5-3b
    RESULTS="${OUT:-$ROOT/bench/results}"
    # 200 users of 5-8 items (~700 training sequences), 112-pixel images (16 image tokens each)
    SYN=(users=200 items=256 min_length=5 max_length=8 image_size=112)
    SIZES=(train.batch_size=16 eval.val_users=200 eval.item_batch_size=64 data.loader_workers=2)
    STEP_ARGS=(--batch-size 16 --reps 5)
    STEP25_ARGS=(--batch-size 16 --reps 3)
    EVAL_ARGS=(--items 100000 1000000 --users 10000 --reps 1 --largest-reps 2)
else
    NGPU=0
    NPROC="${GPU_SH_NPROC:-1}"
    DEVICE=cpu DTYPE=fp32 PRESET=test PRESET25=2.5-test
    RESULTS="${OUT:-$WORK/results}"
    SYN=(users=40 items=32 shapes=4 brands=4 min_length=5 max_length=8 image_size=16)
    SIZES=(train.batch_size=8 eval.val_users=0 eval.item_batch_size=32 data.loader_workers=0)
    STEP_ARGS=(--batch-size 8 --reps 2)
    STEP25_ARGS=(--batch-size 8 --reps 1)
    EVAL_ARGS=(--items 2000 --users 300 --reps 1)
fi
[[ "$RESULTS" == /* ]] || RESULTS="$CALLER_PWD/$RESULTS"
mkdir -p "$RESULTS"
RESULTS="$(cd "$RESULTS" && pwd)" # absolute: step.py runs from $WORK
echo "mode $MODE: $NGPU GPU(s), $NPROC training process(es), $DEVICE $DTYPE, presets $PRESET, $PRESET25"
echo "results -> $RESULTS"

MODEL="$WORK/qwen2vl-$PRESET-random"
MODEL25="$WORK/qwen2.5vl-$PRESET25-random"
DATA="$WORK/synthetic"
RUN="$WORK/run"
CONFIG=search_spaces/base/amazon_qwen2vl.toml

# One list of synthetic knobs feeds `prepare` and the run config (a mismatch is an error).
PREPARE_FLAGS=()
DATA_SETS=()
for kv in "${SYN[@]}"; do
    key="${kv%%=*}" value="${kv#*=}"
    PREPARE_FLAGS+=("--${key//_/-}" "$value")
    DATA_SETS+=("data.synthetic.$key=$value")
done
# Overrides shared by the smoke run and step.py: the amazon_qwen2vl.toml shape (LoRA, gradient
# checkpointing, all-gathered loss) on the random model and the synthetic data, short prompts.
COMMON_SETS=(
    "embedder.name=$MODEL"
    "embedder.dtype=$DTYPE"
    "embedder.finetune=lora"
    "embedder.max_text_tokens=64"
    "embedder.images_per_history=1"
    'embedder.item_prompt="{image}{title} {text}"'
    'embedder.sequence_prompt="{images}{history}"'
    "data.prepare_if_missing=false"
    "data.history_length=5"
    "loss.gather=true"
    "train.device=$DEVICE"
    "${DATA_SETS[@]}"
)
TRAIN_SETS=(
    "${COMMON_SETS[@]}"
    "data.path=$DATA"
    "train.epochs=1"
    "train.early_stopping_patience=0"
    "${SIZES[@]}"
)
TRAIN_FLAGS=()
for kv in "${TRAIN_SETS[@]}"; do TRAIN_FLAGS+=(--set "$kv"); done
STEP_FLAGS=()
for kv in "${COMMON_SETS[@]}"; do STEP_FLAGS+=(--set "$kv"); done

# ---- 1. random model -------------------------------------------------------------------------
stage "1 random Qwen2-VL ($PRESET, $DTYPE, built on $DEVICE)" \
    "$PY" bench/random_qwen2vl.py --preset "$PRESET" --dtype "$DTYPE" --device "$DEVICE" \
    --out "$MODEL"

# ---- 2. synthetic data -----------------------------------------------------------------------
stage "2 synthetic data" "$PY" -m vlm2rec.cli prepare synthetic --out "$DATA" "${PREPARE_FLAGS[@]}"

# ---- 3. smoke training -----------------------------------------------------------------------
# A launcher that runs the CLI and then records this rank's peak CUDA memory.
mkdir -p "$WORK/peak"
cat >"$WORK/train_peak.py" <<'EOF'
import json, os, sys

import torch

from vlm2rec.cli import console

rc = console(sys.argv[1:])
if torch.cuda.is_available():
    rank, dev = int(os.environ.get("RANK", "0")), torch.cuda.current_device()
    rec = {
        "rank": rank,
        "gpu": torch.cuda.get_device_name(dev),
        "max_allocated_bytes": torch.cuda.max_memory_allocated(dev),
        "max_reserved_bytes": torch.cuda.max_memory_reserved(dev),
    }
    with open(os.path.join(os.environ["PEAK_DIR"], f"rank{rank}.json"), "w") as fh:
        json.dump(rec, fh)
sys.exit(rc)
EOF
if [[ "$NPROC" -gt 1 ]]; then
    LAUNCH=("$PY" -m torch.distributed.run --standalone --nproc-per-node "$NPROC")
else
    LAUNCH=("$PY")
fi
export PEAK_DIR="$WORK/peak"
stage "3 smoke training ($NPROC process(es), 1 epoch)" \
    "${LAUNCH[@]}" "$WORK/train_peak.py" train --config "$CONFIG" --out "$RUN" "${TRAIN_FLAGS[@]}"

# ---- 4. step.py ------------------------------------------------------------------------------
# Run from $WORK so that the model's name in the table and the JSON is its folder name, not a temp path.
step_py() { (cd "$WORK" && "$PY" "$ROOT/bench/step.py" "$@"); }
stage "4 bench/step.py ($DEVICE, $DTYPE)" \
    step_py --device "$DEVICE" --dtype "$DTYPE" --models "$(basename "$MODEL")" \
    --config "$ROOT/$CONFIG" --data "$DATA" "${STEP_ARGS[@]}" "${STEP_FLAGS[@]}" \
    --out "$RESULTS/step_$DTYPE.json"

# ---- 5. eval.py ------------------------------------------------------------------------------
stage "5 bench/eval.py ($DEVICE, $DTYPE)" \
    "$PY" bench/eval.py --device "$DEVICE" --dtype "$DTYPE" "${EVAL_ARGS[@]}" \
    --out "$RESULTS/eval_$DTYPE.json"

# ---- 6-7. Qwen2.5-VL-3B ------------------------------------------------------------------------
# The same step benchmark on the random Qwen2.5-VL (LoRA, gradient checkpointing, bf16 on GPU) in
# external fusion (an item's text and image encoded apart, embeddings summed), the paper's setting
# as a secondary summary of it reports.
stage "6 random Qwen2.5-VL ($PRESET25, $DTYPE, built on $DEVICE)" \
    "$PY" bench/random_qwen2vl.py --preset "$PRESET25" --dtype "$DTYPE" --device "$DEVICE" \
    --out "$MODEL25"
stage "7 bench/step.py Qwen2.5-VL ($DEVICE, $DTYPE, external fusion)" \
    step_py --device "$DEVICE" --dtype "$DTYPE" --models "$(basename "$MODEL25")" \
    --config "$ROOT/$CONFIG" --data "$DATA" "${STEP25_ARGS[@]}" "${STEP_FLAGS[@]}" \
    --set embedder.fusion=external --out "$RESULTS/step_qwen2.5vl_$DTYPE.json"

# ---- summary ---------------------------------------------------------------------------------
banner "summary"
T_END=$(date +%s.%N)
MODE="$MODE" NPROC="$NPROC" NGPU="$NGPU" WORK="$WORK" RUN="$RUN" MODEL="$MODEL" DATA="$DATA" \
    STAGES="$STAGES" PEAK_DIR="$WORK/peak" RESULTS="$RESULTS" DTYPE="$DTYPE" MODEL25="$MODEL25" \
    TOTAL_S=$(awk -v a="$T_START" -v b="$T_END" 'BEGIN { printf "%.1f", b - a }') \
    "$PY" - "${TRAIN_SETS[@]}" <<'EOF'
import json, os, sys
from pathlib import Path

sys.path.insert(0, "bench")
from common import headline, write_result

env = os.environ
stages = {}
for line in Path(env["STAGES"]).read_text().splitlines():
    name, secs = line.split("\t")
    stages[name] = float(secs)
run = Path(env["RUN"])
history = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
final = json.loads((run / "final.json").read_text())
peaks = [json.loads(p.read_text()) for p in sorted(Path(env["PEAK_DIR"]).glob("rank*.json"))]
train_s = next(v for k, v in stages.items() if k.startswith("3 "))
nproc, mode = int(env["NPROC"]), env["MODE"]
model = json.loads((Path(env["MODEL"]) / "random_init.json").read_text())
data_meta = json.loads((Path(env["DATA"]) / "meta.json").read_text())
payload = {
    "mode": mode,
    "workers": nproc,
    "launcher": "torchrun" if nproc > 1 else "python",
    "gpus_visible": int(env["NGPU"]),
    "model": model,
    "data": {k: data_meta.get(k) for k in ("num_users", "num_items", "num_interactions")},
    "config": "search_spaces/base/amazon_qwen2vl.toml",
    "overrides": [s.replace(env["WORK"], "$WORK") for s in sys.argv[1:]],
    "stages_s": stages,
    "total_s": float(env["TOTAL_S"]),
    "train_losses": [
        {k: v for k, v in h.items() if k.startswith("train/") or k in ("epoch", "time/epoch_s")}
        for h in history
    ],
    "best_epoch": final["best_epoch"],
    "val": final["val"],
    "test": final["test"],
    "peak_gpu_memory": peaks,
    "peak_gpu_memory_gib_max": max((p["max_allocated_bytes"] for p in peaks), default=0) / 2**30,
    "results": {n: f"{n}_{env['DTYPE']}.json" for n in ("step", "eval", "step_qwen2.5vl")},
    "model_qwen2.5vl": json.loads((Path(env["MODEL25"]) / "random_init.json").read_text()),
}
what = f"random Qwen2-VL {model['preset']}, {model['dtype']}, LoRA, {nproc} worker(s)"
head = headline(f"smoke training wall time ({what}, {mode})", train_s, "s")
path = write_result("gpu_smoke", head, payload, Path(env["RESULTS"]) / "gpu_smoke.json")
losses = [round(h.get("train/loss", float("nan")), 4) for h in history]
print(f"train/loss per epoch: {losses}")
print(f"val/ndcg@10 {final['val'].get('val/ndcg@10')}, test/ndcg@10 {final['test'].get('test/ndcg@10')}")
if peaks:
    print(f"peak GPU memory (allocated, max over ranks): {payload['peak_gpu_memory_gib_max']:.2f} GiB")
for name, secs in stages.items():
    print(f"  {secs:8.1f} s  {name}")
print(f"  {payload['total_s']:8.1f} s  total")
print(f"wrote {path}")
EOF
echo "results in $RESULTS: gpu_smoke.json step_$DTYPE.json eval_$DTYPE.json step_qwen2.5vl_$DTYPE.json"
