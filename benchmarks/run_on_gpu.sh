#!/usr/bin/env bash
# Every check of this project that needs CUDA, in one run, on a machine that has CUDA and PyTorch but maybe no
# network (e.g. a borrowed cloud GPU with its own Python 3.12 image).
#
#   here:   bash benchmarks/run_on_gpu.sh --prepare   # .gpu/: the notebook runner's wheels (py3.12) + mnist5k.npz
#   there:  bash benchmarks/run_on_gpu.sh             # reads .gpu/, writes its results to $OUT (default .gpu/out)
#
# There it runs, in order: the tests that are skipped without CUDA; `bench_models.py` and `bench_eigen.py`
# (hesslib's rows) with `--device cuda`; the batch pipeline on the MLP and the CNN (`python -m hesslib run`,
# device: cuda); and the whole paper from an empty cache with `-p device cuda` and a compute log. About 9 minutes
# on one H200.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [[ "${1:-}" == "--prepare" ]]; then
    mkdir -p .gpu && cp data/mnist5k.npz .gpu/ && "$PY" -m pip download -q --only-binary=:all: \
        --python-version 3.12 --implementation cp --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux_2_28_x86_64 -d .gpu/wheels papermill nbconvert ipykernel
    echo "prepared .gpu/ ($(du -sh .gpu | cut -f1)); carry it to the GPU machine"
    exit
fi
OUT=${OUT:-.gpu/out}
mkdir -p "$OUT" data && cp -n .gpu/mnist5k.npz data/ 2>/dev/null
"$PY" -c "import papermill" 2>/dev/null || "$PY" -m pip install -q --no-index --find-links .gpu/wheels papermill nbconvert ipykernel
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
"$PY" -c "import torch; print('torch', torch.__version__, 'on', torch.cuda.get_device_name())" || exit 1
start=$SECONDS
timeout 300 "$PY" -m pytest -q -p no:cacheprovider tests/test_distributed.py tests/test_experiment.py \
    tests/test_stopping.py tests/test_notebooks.py -k "gpu or cuda" 2>&1 | tail -5
echo "tests: $((SECONDS - start)) s"
timeout 120 "$PY" benchmarks/bench_models.py --device cuda --repeat 5 && cp benchmarks/results/bench_models_cuda.json "$OUT/"
timeout 120 "$PY" benchmarks/bench_eigen.py --device cuda --power-max-hvps 1000 2>&1 | tail -25 \
    && cp benchmarks/results/bench_eigen_cuda.json "$OUT/"
for model in mlp cnn; do
    printf 'device: cuda\nmodel: %s\ncache_dir: /tmp/hesslib-gpu-cache\n' "$model" > "/tmp/$model.yaml"
    timeout 120 "$PY" -m hesslib run "/tmp/$model.yaml" --out "/tmp/run-$model" 2>&1 | tail -1
    cp "/tmp/run-$model/results.json" "$OUT/run_$model.json"
done
rm -rf /tmp/hesslib-gpu-paper && start=$SECONDS
HESSLIB_COMPUTE_LOG="$OUT/compute.log" timeout 420 "$PY" -m hesslib.paper --build /tmp/hesslib-gpu-paper \
    --no-progress -p device cuda -p cache_dir /tmp/hesslib-gpu-paper/cache 2>&1 | grep -E "^\[|done in|failed|built in"
echo "paper from an empty cache on the GPU: $((SECONDS - start)) s"
cp /tmp/hesslib-gpu-paper/figures/RESULTS.json "$OUT/" 2>/dev/null
