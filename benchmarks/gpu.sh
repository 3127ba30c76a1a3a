#!/usr/bin/env bash
# The checks that need a CUDA GPU, in one run: the CUDA tests (every test whose name says
# cuda: the zoo on the GPU, compiled by inductor too, against the CPU; the callback under
# "16-mixed"; fused attention; device-side noise), the full suite with a GPU present, and
# the GPU benchmarks (analyzers with Zennit/Captum beside where importable, transformers
# with LXT beside where importable). Logs go to the folder given (default: gpu-logs/).
#
#     bash benchmarks/gpu.sh [LOG_FOLDER]
set -uo pipefail
cd "$(dirname "$0")/.."
logs="${1:-gpu-logs}"
mkdir -p "$logs"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.__version__, torch.cuda.get_device_name())" || exit 1

echo "== CUDA tests"
python -m pytest -q -p no:cacheprovider -rs -k cuda tests 2>&1 | tee "$logs/cuda_tests.log" | tail -5
echo "== analyzers, batch 16, 3x64x64, and batch 64, 3x224x224"
python benchmarks/analyzers.py --device cuda --interleave --repeats 7 2>&1 | tee "$logs/analyzers.log"
python benchmarks/analyzers.py --device cuda --interleave --repeats 5 --batch 64 --size 224 \
    --only gradient input_t_gradient guided_backprop deconvnet integrated_gradients smoothgrad \
    lrp.z lrp.epsilon lrp.sequential_preset_a lrp.sequential_preset_b lrp.alpha_2_beta_1 \
    2>&1 | tee "$logs/analyzers_224.log"
echo "== transformers"
for batch in 16 256; do
    python benchmarks/transformer_cost.py --device cuda --rounds 20 --batch "$batch" 2>&1 \
        | tee -a "$logs/transformers.log"
done
echo "== full suite with a GPU present"
python -m pytest -q -p no:cacheprovider tests 2>&1 | tee "$logs/full_suite.log" | tail -5
