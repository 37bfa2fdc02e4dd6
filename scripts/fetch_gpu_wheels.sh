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
# Parallel test workers: the GPU tests are bound by kernel compilation, which is per process.
download .whl "pytest-xdist" "execnet"
# diffusers' own dependencies that a machine may lack (recent transformers no longer pulls in requests):
# gpu_check.sh installs each of these only if its module does not import, so it never shadows the machine's.
mkdir -p .whl/if_missing
download .whl/if_missing requests urllib3 certifi charset-normalizer idna filelock
download .whl/fallback "huggingface_hub==$(version huggingface_hub)"
ls -l .whl .whl/fallback
du -sh .whl

# The text encoder of the bundled model, for training on the GPU machine: the packaged folder is an 83 MB wheel,
# over what a remote call may carry, so carry an fp16 copy (~45 MB) of the model folder instead.
"$PY" - <<'PYEOF'
import torch
from pladis_analysis.models.shapes.text_encoder import load_text_encoder
tokenizer, model = load_text_encoder()
model.half().save_pretrained(".whl/minilm_fp16", safe_serialization=True)
tokenizer.save_pretrained(".whl/minilm_fp16")
PYEOF
du -sh .whl/minilm_fp16
