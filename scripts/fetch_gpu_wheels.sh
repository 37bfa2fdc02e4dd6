#!/usr/bin/env bash
# Fill .whl/ (git-ignored) with the pure-Python wheels that scripts/gpu_check.sh installs on a bare GPU machine,
# which has torch (CUDA), triton, transformers, numpy, scipy, pandas, seaborn, pytest and hypothesis but no
# network, no diffusers and no entmax. Versions are those of this checkout's .venv, so the GPU run exercises the
# same library code the CPU tests did.
#
#   scripts/fetch_gpu_wheels.sh            # then carry .whl/ to the GPU machine beside the checkout
#
# .whl/fallback/ holds huggingface_hub: gpu_check.sh puts it on the path only if diffusers fails to import
# with the machine's own copy (shadowing it could break the machine's transformers).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
version() { "$PY" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$1"; }

download() {  # download DEST SPEC...: pure-Python wheels for CPython 3.12, no dependencies
    local dest=$1; shift
    "$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation py --abi none --platform any --dest "$dest" "$@"
}

rm -rf .whl
mkdir -p .whl/fallback
download .whl \
    "diffusers==$(version diffusers)" \
    "entmax==$(version entmax)" \
    "importlib_metadata==$(version importlib_metadata)" \
    "zipp==$(version zipp)" \
    "pytest-timeout==$(version pytest-timeout)" \
    "tqdm==$(version tqdm)"
download .whl/fallback "huggingface_hub==$(version huggingface_hub)"
ls -l .whl .whl/fallback
du -sh .whl
