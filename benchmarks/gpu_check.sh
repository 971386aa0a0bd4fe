#!/usr/bin/env bash
# The one GPU session of the speed issue (~8 minutes on one H100/H200), printed as it goes:
#  1. CUDA correctness: the reference fixture's encode on the GPU matches the golden tensors
#     to 1e-4 (TF32 off), and a bf16 training step tracks fp32 (the CUDA cases of the tests).
#  2. stellar-b16 bf16 encode throughput at batch 256, eager and compiled.
#  3. The vit-b16 recipe's training step at batch 64, eager and compiled, with MFU.
# Run from the repository root with ../shared beside it:  bash benchmarks/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name())"

python -m pytest -q -rs tests/models/test_parity.py tests/train/test_precision.py -k cuda

for flag in "" "--compile"; do
    python benchmarks/bench_encode.py --model stellar-b16 --batch 256 --device cuda \
        --dtype bf16 --iters 20 $flag
done

# objective.recon=false: the VQGAN tokenizer's weights are not in the repository.
for flag in "" "--compile"; do
    python benchmarks/bench_train.py --config vit-b16 --device cuda --warmup 3 --iters 10 \
        $flag batch_size=64 data.source=scenes data.scenes_size=256 objective.recon=false
done
