#!/usr/bin/env bash
# Every GPU benchmark of cloudjax in one command, sized for ~12 minutes of one H100/H200 (the machine's start
# included): the noise kernels, the train step (MFU), training throughput, and the white-vs-cloud study at 32 px
# with the `small` UNet. Everything lands in one folder: JSON per part, the study's figures and per-run logs in
# white_vs_cloud.tar.gz, and suite.log (at most 8 files, the most a GPU machine returns).
#
#   bash benchmarks/gpu_suite.sh [DIR]             # on the GPU machine; DIR defaults to $OUT
#   bash benchmarks/gpu_suite.sh --dry-run [DIR]   # every part at tiny sizes on the CPU (tests/ runs this)
#   bash benchmarks/gpu_suite.sh --inception-weights PATH [DIR]   # the study also scores FID (README "FID")
#
# Budget, seconds of the command on an H200. Estimates: no GPU has run this yet. Each part has a hard timeout, the
# study trains every model first and then runs the samplers in priority order (dpm++2m, ddim, ddpm), saving each
# row as it comes, so an overrun costs the last ddpm rows, never a whole part.
#   start-up, imports ........................................  20
#   noise benchmark (large shapes, 5 repeats) ..................  40   timeout  90
#   train step: small, 32 px, bf16, white + cloud, batch 128 ...  60   timeout 120   (2 compiles)
#   throughput: cloudjax vs PyTorch, Fashion-MNIST-fed ........  50   timeout 100   (torch.compile's too)
#   white vs cloud, 2 datasets × 4 variants (8 runs):
#     train-step compiles, one per run ........................ 160   (~20 s each)
#     training, TRAIN_S ....................................... 100   (steps from the step time measured above)
#     sampler compiles: 6 diffusions × 3 samplers ...........   ~20  (~1 s each; one program whatever the NFE)
#     sampling 1024 images × 435 NFE × 3 samplers × 8 models .   ~30  (batches of 512, a few ms a forward)
#   total .................................................... 480   of 570 s: the study gets what is left of 570 s
# A GPU machine allows 600 s per command; the machine's start (1–2 min) comes on top. Compiles, not arithmetic,
# fill the study's time at this size: more training steps cost little once compiled (TRAIN_S=... to change it).
# VARIANTS, SAMPLERS and TRAIN_S can be set in the environment.
#
# Fashion-MNIST: the GPU machine has no dataset files and no network. Copy the IDX files into the checkout first
# (git ignores .data/) and carry the folder to the GPU machine:
#   mkdir -p .data && cp -r /usr/share/datasets/fashion-mnist .data/   # 30 MB; carry: [".data"]
# Without them the study runs on natural patches alone. On the machine the repo is put on PYTHONPATH.
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
DIR="${1:-${OUT:?give an output folder or set OUT}}"
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
    if [[ -n "$d" && -f "$d/train-images-idx3-ubyte.gz" ]]; then FMNIST="$d"; break; fi
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
    TRAIN_S=1
    ROUND=1
    DATASETS=(patches:400)
    STUDY_TIMEOUT=300
    PART_TIMEOUT=300
else
    NOISE=(--large --repeats 5)
    STEP=(--models small --sizes 32 --dtypes bfloat16 --batch 128 --iters 10)
    THROUGHPUT=(--cores all --presets small --sizes 32 --dtype bfloat16 --batch-size 128 --steps 10 --turns 3)
    [[ -n "$FMNIST" ]] && THROUGHPUT+=(--input fashion_mnist --data-dir "$FMNIST")
    VARIANT_LIST=(${VARIANTS:-white cloud cloud-calibrated cloud-pixel-loss})
    STUDY=(--image-size 32 --model small --dtype bfloat16 --train-batch 128 --prediction v --lr 2e-4
        --samplers ${SAMPLERS:-dpm++2m ddim ddpm}
        --nfe 5 10 20 50 100 250 --num-samples 1024 --sample-batch 512 --swd-patches 16384)
    TRAIN_S=${TRAIN_S:-100}
    ROUND=100
    DATASETS=(patches)
    [[ -n "$FMNIST" ]] && DATASETS+=(fashion_mnist)
    STUDY_TIMEOUT=0 # what is left of 570 s when the study starts
    PART_TIMEOUT=0
fi
part_timeout() { ((PART_TIMEOUT)) && echo "$PART_TIMEOUT" || echo "$1"; }

$PY -c "import jax; print('jax', jax.__version__, jax.devices())"

log "noise benchmark"
timeout "$(part_timeout 90)" $PY benchmarks/noise.py "${NOISE[@]}" --out "$DIR/noise.json" || log "noise: exit $?"

log "train step"
timeout "$(part_timeout 120)" $PY benchmarks/train_step.py "${STEP[@]}" --out "$DIR/train_step.json" ||
    log "train step: exit $?"

log "throughput"
timeout "$(part_timeout 100)" $PY benchmarks/train_throughput.py "${THROUGHPUT[@]}" --out "$DIR/train_throughput.json" ||
    log "throughput: exit $?"

# Training steps per run: TRAIN_S seconds over the runs at the step time the train-step benchmark just measured
# (its white row; a cloud step costs the same to within a few per cent), 10 % kept for loading and saving; the
# EMA's time constant is a quarter of the run (decay 1 − 4 / steps).
read -r STEPS EMA < <($PY - "$DIR/train_step.json" "$TRAIN_S" "$((${#DATASETS[@]} * ${#VARIANT_LIST[@]}))" "$ROUND" <<'EOF'
import json, sys
rows = json.load(open(sys.argv[1]))["rows"]
seconds = next(r["step_seconds"] for r in rows if r["noise"] == "white")
budget, runs, unit = float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
steps = max(2 * unit, int(budget / runs / (1.1 * seconds)) // unit * unit)
print(steps, max(0.0, 1 - 4 / steps))
EOF
) || true
: "${STEPS:=$((2 * ROUND))}" "${EMA:=0.98}" # no step time measured: the smallest study
((DRY)) || STUDY_TIMEOUT=$((570 - (SECONDS - START)))
log "white vs cloud (${DATASETS[*]}; $STEPS steps, EMA $EMA; timeout ${STUDY_TIMEOUT}s)"
WORK="$(mktemp -d)"
STUDY_OUT="$DIR/white_vs_cloud"
timeout "$STUDY_TIMEOUT" $PY benchmarks/white_vs_cloud.py "${STUDY[@]}" --variants "${VARIANT_LIST[@]}" \
    --train-steps "$STEPS" --ema-decay "$EMA" \
    --datasets "${DATASETS[@]}" ${FMNIST:+--data-dir "$FMNIST"} --workdir "$WORK" --classifier "$WORK/classifier.npz" \
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
log "done: $(ls "$DIR" | tr '\n' ' ')"
