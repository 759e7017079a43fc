#!/usr/bin/env bash
# The GPU figures for the README in one command, sized for a few minutes on a borrowed GPU
# (under 8 minutes on one Hopper card; each step has its own time limit so one slow step cannot
# eat the others' time). Run from the repository root, with ../shared/data present:
#
#     bash benchmarks/gpu_check.sh            # PYTHON=.venv/bin/python and OUT=gpu-check by default
#
# 1. training throughput: cxr's loop against a bare bf16 channels-last loop, ResNet-50 at 224 px,
#    batch 64 and 256, eager and torch.compile (benchmarks/train_speed.py);
# 2. the batch inference path on the GPU against the cores' decode + CLAHE rate
#    (benchmarks/predict_folder.py --device cuda);
# 3. one short training of the README's Kermany recipe on the GPU (benchmarks/real_data.py);
# 4. one epoch under `torchrun --nproc_per_node N` (N = the GPUs visible) with NCCL.
# Everything printed also lands in OUT/*.txt; the summary at the end names the card.
set -u -o pipefail
PYTHON=${PYTHON:-.venv/bin/python}
OUT=${OUT:-gpu-check}
TORCHRUN=${TORCHRUN:-$(dirname "$PYTHON")/torchrun}
mkdir -p "$OUT"
export PYTHONPATH=${PYTHONPATH:-src}
export TQDM_DISABLE=1
status=0

step() {  # step NAME SECONDS COMMAND...: run with a time limit, keep its output, note failures
    local name=$1 limit=$2
    shift 2
    local tick=$SECONDS
    echo "== $name (limit ${limit} s)"
    timeout --signal=INT --kill-after=15 "$limit" "$@" 2>&1 | tee "$OUT/$name.txt"
    local rc=${PIPESTATUS[0]}
    echo "== $name: exit $rc after $((SECONDS - tick)) s"
    if [ "$rc" -ne 0 ]; then status=1; fi
}

card=$("$PYTHON" -c 'import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU")')
ngpu=$("$PYTHON" -c 'import torch; print(torch.cuda.device_count())')
if [ "$ngpu" -lt 1 ]; then
    echo "no CUDA GPU visible to torch: this check is for a GPU machine" >&2
    exit 2
fi
echo "card: $card ($ngpu visible); torch $("$PYTHON" -c 'import torch; print(torch.__version__)')"
start=$SECONDS

step train_speed 300 "$PYTHON" benchmarks/train_speed.py --arch resnet50 --image-size 224 \
    --batch-sizes 64,256 --compile off,on --epoch-images 3072 --val-images 512 --rounds 2
step predict_folder 90 "$PYTHON" benchmarks/predict_folder.py --device cuda --only-device \
    --files 2000 --rounds 2 --batch-size 128
step readme_recipe 100 "$PYTHON" benchmarks/real_data.py kermany --epochs 2 --out "$OUT/run-kermany"
step torchrun_nccl 60 "$TORCHRUN" --standalone --nproc_per_node "$ngpu" -m cxr.cli train \
    --data ../shared/data/kermany-pneumonia/chest_xray/train --limit 1024 --image-size 128 \
    --epochs 1 --batch-size $((64 * ngpu)) --out "$OUT/run-torchrun" \
    --set "train.cache_dir=\"$OUT/cache\""

echo
echo "## GPU figures: $card, $(date -u +%Y-%m-%d), $((SECONDS - start)) s in all"
echo
echo "### Training throughput (benchmarks/train_speed.py)"
grep -E '^\||^device|^resnet|^lowest' "$OUT/train_speed.txt" || true
echo
echo "### Batch inference on the GPU (benchmarks/predict_folder.py --device cuda)"
grep -E '^\||^batch path|^end to end' "$OUT/predict_folder.txt" || true
echo
echo "### README recipe, 2 epochs (benchmarks/real_data.py kermany --epochs 2)"
grep -E '^epoch|^\||minutes' "$OUT/readme_recipe.txt" || true
echo
echo "### torchrun --nproc_per_node $ngpu, NCCL, one epoch of 1,024 images at 128 px"
grep -E '^epoch|^data' "$OUT/torchrun_nccl.txt" || true
exit $status
