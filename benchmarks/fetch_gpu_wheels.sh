#!/usr/bin/env bash
# Here, before a GPU call: the wheels the GPU image (Python 3.12, torch, transformers; no TRL) lacks, for
# benchmarks/gpu_call.sh. .whl: TRL and what it needs beyond the image (installed with --target, no deps).
# .whl-colab: papermill, ipykernel and the book's runtime packages with their dependencies, less what the
# image has (torch, numpy, the CUDA libraries), installed into the Colab-like environment only if papermill
# or ipykernel is missing there. Both folders are git-ignored and carried by the call.
set -euo pipefail
PLAT=(--only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64
      --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
PIP=${PIP:-python3 -m pip}
rm -rf .whl .whl-colab
$PIP download -q --no-deps "${PLAT[@]}" -d .whl trl==1.16.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19
$PIP download -q "${PLAT[@]}" -d .whl-colab papermill ipykernel matplotlib  # the image has pandas, sympy (torch needs it), safetensors, tqdm
# the image has these (and a wheel of them would be gigabytes or would replace its CUDA build)
rm -f .whl-colab/numpy-*.whl .whl-colab/pandas-*.whl
find .whl-colab -name 'nvidia_*' -o -name 'torch-*' -o -name 'triton-*' | xargs -r rm -f
du -sh .whl .whl-colab
