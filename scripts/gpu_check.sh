#!/usr/bin/env bash
# One-shot GPU check for the Triton kernels (issue 5), for a bare GPU machine with no network:
#   1. installs the pure-Python wheels carried in .whl/ (fill it with scripts/fetch_gpu_wheels.sh) into /tmp/site;
#   2. runs the kernel and GPU tests (pytest -m "triton or gpu") on CUDA, with the interpreter OFF;
#   3. runs experiments/bench_cross_attention.py (SD1.5/SDXL/SANA shapes, bf16, SDXL-shaped UNet).
# Everything it writes goes to $OUT (default ./gpu_out), at most 8 files:
#   env.txt, pytest.txt, junit.xml, bench.log, bench_cross_attention.csv, bench_cross_attention.meta.json, status.txt
#
#   OUT=/some/dir scripts/gpu_check.sh [--skip-tests] [--skip-bench] [--bench-args "..."]
# Time limits (seconds) per stage: TEST_TIMEOUT (default 200), BENCH_TIMEOUT (default 360): together they fit a
# 10-minute remote command. With more time, run the stages as two commands (--skip-bench, then --skip-tests).
# The benchmark flushes its table after every shape, so a timeout keeps the rows measured so far.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu_out}
PY=${PY:-python3}
TEST_TIMEOUT=${TEST_TIMEOUT:-200}
BENCH_TIMEOUT=${BENCH_TIMEOUT:-360}
RUN_TESTS=1
RUN_BENCH=1
BENCH_ARGS=""
while [ $# -gt 0 ]; do
    case "$1" in
        --skip-tests) RUN_TESTS=0 ;;
        --skip-bench) RUN_BENCH=0 ;;
        --bench-args) BENCH_ARGS="$2"; shift ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
    shift
done
mkdir -p "$OUT"
STATUS="$OUT/status.txt"
: > "$STATUS"
note() { echo "$*" >> "$STATUS"; }

# The kernels must be compiled for the GPU: the interpreter is decided at import time.
unset TRITON_INTERPRET
export PYTHONDONTWRITEBYTECODE=1 HYPOTHESIS_PROFILE=${HYPOTHESIS_PROFILE:-ci}

{
    date -u
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.memory --format=csv 2>&1
    "$PY" -c "import sys, torch, triton; print('python', sys.version.split()[0]); print('torch', torch.__version__, 'cuda', torch.version.cuda); print('triton', triton.__version__); print('device', torch.cuda.get_device_name() if torch.cuda.is_available() else 'NO CUDA')" 2>&1
} > "$OUT/env.txt"

# 1. wheels: diffusers, entmax, ... into /tmp/site, never touching the machine's own packages.
SITE=/tmp/site
rm -rf "$SITE" && mkdir -p "$SITE"
if ls .whl/*.whl > /dev/null 2>&1; then
    "$PY" -m pip install --quiet --no-index --no-deps --target "$SITE" .whl/*.whl >> "$OUT/env.txt" 2>&1 \
        && note "wheels: installed $(ls .whl/*.whl | wc -l) from .whl/" || note "wheels: pip install FAILED (see env.txt)"
else
    note "wheels: .whl/ is empty or missing (run scripts/fetch_gpu_wheels.sh before carrying the tree)"
fi
export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"
if ! "$PY" -c "import diffusers" >> "$OUT/env.txt" 2>&1; then
    if ls .whl/fallback/*.whl > /dev/null 2>&1; then
        FALLBACK=/tmp/site_fallback
        rm -rf "$FALLBACK" && mkdir -p "$FALLBACK"
        "$PY" -m pip install --quiet --no-index --no-deps --target "$FALLBACK" .whl/fallback/*.whl >> "$OUT/env.txt" 2>&1
        export PYTHONPATH="$SITE:$FALLBACK:$PWD"
    fi
    "$PY" -c "import diffusers" >> "$OUT/env.txt" 2>&1 && note "diffusers: imports with the fallback huggingface_hub" \
        || note "diffusers: does NOT import (UNet rows and diffusion tests will fail or skip)"
else
    note "diffusers: imports"
fi
"$PY" -c "import entmax" 2>/dev/null && note "entmax: imports" || note "entmax: missing (naive rows will carry an error)"
"$PY" - >> "$OUT/env.txt" 2>&1 <<'PYEOF'
from pladis_analysis.maps.kernels import dispatch
import torch
print("triton import error:", dispatch.triton_import_error())
print("kernels interpreted:", dispatch.kernels_interpreted())
if torch.cuda.is_available():
    q = torch.randn(2, 10, 4096, 64, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(2, 10, 77, 64, device="cuda", dtype=torch.bfloat16)
    print("attention dispatch:", dispatch.choose_attention_backend(q, k, k))
PYEOF

# 2. tests on CUDA
if [ "$RUN_TESTS" = 1 ]; then
    # No autotuning in the tests: every tuned launch would compile four variants of each kernel.
    PLADIS_TRITON_AUTOTUNE=0 timeout "$TEST_TIMEOUT" "$PY" -m pytest -m "triton or gpu" -q -p no:cacheprovider \
        --ignore=tests/test_kernels_bench.py --ignore=tests/test_kernels_compile.py \
        --junitxml="$OUT/junit.xml" tests > "$OUT/pytest.txt" 2>&1
    rc=$?
    note "tests: exit $rc ($(tail -n 1 "$OUT/pytest.txt"))"
fi

# 3. benchmark
if [ "$RUN_BENCH" = 1 ]; then
    # shellcheck disable=SC2086
    timeout "$BENCH_TIMEOUT" "$PY" experiments/bench_cross_attention.py --out "$OUT/bench_cross_attention.csv" \
        $BENCH_ARGS > "$OUT/bench.log" 2>&1
    rc=$?
    note "bench: exit $rc"
    tail -n 12 "$OUT/bench.log" >> "$STATUS"
fi
cat "$STATUS"
