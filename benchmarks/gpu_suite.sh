#!/usr/bin/env bash
# Every GPU benchmark of cloudjax in one command, sized for one 10-minute command on an H100/H200: the white-vs-cloud
# study at 32 px with the `small` UNet first (the project's research question), then the noise kernels, the train
# step (MFU) and training throughput with what is left. Everything lands in one folder: JSON per part, the study's
# figures and per-run logs in white_vs_cloud.tar.gz, and suite.log (at most 8 files).
#
#   bash benchmarks/gpu_suite.sh [DIR]             # on a GPU; DIR defaults to benchmarks/results/gpu_suite
#   bash benchmarks/gpu_suite.sh --dry-run [DIR]   # every part at tiny sizes on the CPU (tests/ runs this)
#   bash benchmarks/gpu_suite.sh --inception-weights PATH [DIR]   # the study also scores FID (README "FID")
#
# Budget: 570 s of command. Measured on one NVIDIA H200 (jax 0.11.2), where XLA's compiles, not the arithmetic, set
# the pace: the `small` train step at 32 px, bf16, batch 128 compiles in ~63 s and then runs in 15.7 ms (8,100
# images/s); the study's 200-step runs took ~84 s each, compile included.
#   start-up, imports ..........................................   5
#   white vs cloud, Fashion-MNIST (patches without it), white and cloud, TRAIN_STEPS (2,000 × 128 = 256,000
#     images, the studies' floor) each: 2 × (63 s compile + ~130 s training) ...... 390
#     samplers (dpm++2m, ddim, then ddpm), 1,024 samples, NFE 5–250, saved row by row ... the rest of 440 s
#   noise benchmark (large shapes, 3 repeats) ..................  25   (measured 21 s)
#   train step: small, 32 px, bf16, white then cloud, batch 128 .. 150   (measured 63 s per compile)
#   throughput: cloudjax vs PyTorch/diffusers .................. what is left (it needs a diffusers wheel there)
# Each part's timeout is what is left of 570 s; each part saves its rows as they come. VARIANTS, DATASETS,
# SAMPLERS and TRAIN_STEPS can be set in the environment.
#
# Fashion-MNIST on a machine without the dataset or a network: copy the four IDX files into the checkout first (git
# ignores .data/) and take that folder along with the checkout:
#   mkdir -p .data && cp -r /usr/share/datasets/fashion-mnist .data/   # 30 MB
# Without them the study runs on natural patches. On the machine the repo is put on PYTHONPATH.
set -euo pipefail

DRY=0
WEIGHTS=""
while [[ "${1:-}" == --* ]]; do
    case "$1" in
    --dry-run) DRY=1 && shift ;;
    --inception-weights) WEIGHTS="$(realpath "$2")" && shift 2 ;;
    *) echo "gpu_suite.sh: unknown option $1" >&2 && exit 2 ;;
    esac
done
DIR="${1:-benchmarks/results/gpu_suite}"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
mkdir -p "$DIR"
DIR="$(cd "$DIR" && pwd)"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY="${PYTHON:-python3}"
cd "$REPO"
exec > >(tee -a "$DIR/suite.log") 2>&1
START=$SECONDS
log() { echo "[gpu_suite $((SECONDS - START))s] $*"; }

FMNIST=""
for d in "${FASHION_MNIST_DIR:-}" /usr/share/datasets/fashion-mnist "$REPO/.data/fashion-mnist"; do
    if [[ -n "$d" && -f "$d/train-images-idx3-ubyte.gz" && -f "$d/t10k-images-idx3-ubyte.gz" ]]; then
        FMNIST="$d"
        break
    fi
done

if ((DRY)); then
    # tiny sizes on the CPU: every part runs, nothing is measured, so XLA compiles without backend optimisation
    # (a tiny train step: 8 s instead of 18 s)
    export XLA_FLAGS="${XLA_FLAGS:+$XLA_FLAGS }--xla_backend_optimization_level=0"
    NOISE=(--quick --repeats 1)
    STEP=(--quick --dtypes float32)
    THROUGHPUT=(--quick --frameworks cloudjax --cores all)
    VARIANT_LIST=(cloud)
    STUDY=(--tiny --nfe 3)
    STEPS=4 # the fewest whose 25 % checkpoint is a step
    DATASET_LIST=(patches:400)
    BUDGET=900
else
    NOISE=(--large --repeats 3)
    STEP=(--models small --sizes 32 --dtypes bfloat16 --batch 128 --iters 10)
    THROUGHPUT=(--cores all --presets small --sizes 32 --dtype bfloat16 --batch-size 128 --steps 10 --turns 3)
    [[ -n "$FMNIST" ]] && THROUGHPUT+=(--input fashion_mnist --data-dir "$FMNIST")
    VARIANT_LIST=(${VARIANTS:-white cloud})
    STUDY=(--image-size 32 --model small --dtype bfloat16 --train-batch 128 --prediction v --lr 2e-4
        --samplers ${SAMPLERS:-dpm++2m ddim ddpm}
        --nfe 5 10 20 50 100 250 --num-samples 1024 --sample-batch 512 --swd-patches 16384)
    STEPS=${TRAIN_STEPS:-2000}
    DATASET_LIST=(${DATASETS:-$([[ -n "$FMNIST" ]] && echo fashion_mnist || echo patches)})
    BUDGET=570
fi
# what is left of the budget, at most $1 seconds: each part's timeout
left() {
    local rest=$((BUDGET - (SECONDS - START))) cap=${1:-0}
    ((cap == 0 || rest < cap)) || rest=$cap
    echo $((rest > 1 ? rest : 1))
}
EMA=$($PY -c "print(max(0.0, 1 - 4 / $STEPS))") # the EMA's time constant: a quarter of the run

$PY -c "import jax; print('jax', jax.__version__, jax.devices())"

log "white vs cloud (${DATASET_LIST[*]}: ${VARIANT_LIST[*]}; $STEPS steps, EMA $EMA; timeout $(left 440)s)"
WORK="$(mktemp -d)"
STUDY_OUT="$DIR/white_vs_cloud"
timeout "$(left 440)" $PY benchmarks/white_vs_cloud.py "${STUDY[@]}" --variants "${VARIANT_LIST[@]}" \
    --train-steps "$STEPS" --ema-decay "$EMA" \
    --datasets "${DATASET_LIST[@]}" ${FMNIST:+--data-dir "$FMNIST"} --workdir "$WORK" --classifier "$WORK/classifier.npz" \
    ${WEIGHTS:+--inception-weights "$WEIGHTS"} --out "$STUDY_OUT" || log "white vs cloud: exit $?"

# Bring-back: the study's JSON beside the others; its figures and each run's run.json and metrics.jsonl (the loss
# curve) in one tarball. The checkpoints and EMA weights of `small` (17 MB each in bf16) stay on the machine.
if [[ -f "$STUDY_OUT/white_vs_cloud.json" ]]; then
    cp "$STUDY_OUT/white_vs_cloud.json" "$DIR/white_vs_cloud.json"
    for run in "$WORK"/*/; do
        mkdir -p "$STUDY_OUT/runs/$(basename "$run")"
        cp "$run"/run.json "$run"/metrics.jsonl "$STUDY_OUT/runs/$(basename "$run")/"
    done
    tar -czf "$DIR/white_vs_cloud.tar.gz" -C "$STUDY_OUT" .
    rm -rf "$STUDY_OUT"
fi
rm -rf "$WORK"

log "noise benchmark"
timeout "$(left 60)" $PY benchmarks/noise.py "${NOISE[@]}" --out "$DIR/noise.json" || log "noise: exit $?"

log "train step"
timeout "$(left 170)" $PY benchmarks/train_step.py "${STEP[@]}" --out "$DIR/train_step.json" ||
    log "train step: exit $?"

log "throughput"
timeout "$(left)" $PY benchmarks/train_throughput.py "${THROUGHPUT[@]}" --out "$DIR/train_throughput.json" ||
    log "throughput: exit $?"
log "done: $(ls "$DIR" | tr '\n' ' ')"
