#!/usr/bin/env bash
# One-shot GPU run for a bare GPU machine with no network (everything it needs is carried in .whl/, filled by
# scripts/fetch_gpu_wheels.sh):
#   1. installs the pure-Python wheels of .whl/ into /tmp/site;
#   2. (--train-minutes N) trains the bundled shapes model on the GPU in the background (issue 4), with the
#      fp16 text encoder of .whl/minilm_fp16, while
#   3. the kernel and GPU tests run (pytest -m "triton or gpu", interpreter OFF, parallel when xdist is there);
#   4. once training is done (the benchmark must have the GPU to itself), runs experiments/bench_cross_attention.py
#      (SDXL-shaped UNet end to end first, then SD1.5/SDXL/SANA attention shapes, bf16).
#   5. profiles the host side of one kernel call, and
#   6. counts the kernel's threshold-search steps on the random scores (experiments/search_steps.py: the same
#      counts as the CPU interpreter's in results/search_steps.csv, up to the order of float32 sums), and
#   7. prices record_attention's statistics from the fused kernel against the torch path's on an SD1.5-shaped
#      UNet (experiments/bench_probe_overhead.py: stock, probe_basic, probe_basic_torch at 64×64 latents).
# It writes at most 8 files to $OUT (default ./gpu_out): status.txt, bench_cross_attention.csv and .meta.json,
# search_steps.csv and .meta.json, shapes_train.tar.gz (exported EMA weights + loss table), probe_overhead.tar.gz
# (its summary and runs tables with their meta), logs.tar.gz (env, pytest, junit, bench, train, search-steps
# and probe logs, launch profile).
#
#   OUT=/some/dir scripts/gpu_check.sh [--skip-tests] [--skip-bench] [--bench-args "..."]
#                                      [--train-minutes N] [--train-args "..."]
# Time limits (seconds) per stage: TEST_TIMEOUT (default 240), BENCH_TIMEOUT (default 240), STEPS_TIMEOUT
# (default 90), PROBE_TIMEOUT (default 90); training stops itself
# at its time budget (TRAIN_TIMEOUT, default budget + 120 s, is the backstop). DEADLINE (default 570 s from the
# start) caps them all: a stage gets at most what is left before it, less 20 s for packing, and is skipped when
# under 20 s are left, so that the files come back even from a 600-s command. Defaults fit a 10-minute command
# with --train-minutes 4. The benchmark flushes its table after every shape, so a timeout keeps the rows so far.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu_out}
PY=${PY:-python3}
TEST_TIMEOUT=${TEST_TIMEOUT:-240}
BENCH_TIMEOUT=${BENCH_TIMEOUT:-240}
STEPS_TIMEOUT=${STEPS_TIMEOUT:-90}
PROBE_TIMEOUT=${PROBE_TIMEOUT:-90}
DEADLINE=${DEADLINE:-570}
# capped LIMIT: LIMIT, or the seconds left before DEADLINE less 20 for packing if fewer (0: no time left)
capped() {
    local left=$((DEADLINE - SECONDS - 20))
    if [ "$left" -lt 20 ]; then echo 0; elif [ "$1" -lt "$left" ]; then echo "$1"; else echo "$left"; fi
}
# within LIMIT CMD...: CMD under `timeout`, capped by the deadline; exit 124 at once when no time is left
# (`timeout 0` would mean no limit at all)
within() {
    local limit
    limit=$(capped "$1")
    shift
    if [ "$limit" -le 0 ]; then echo "skipped: the deadline is near" >&2; return 124; fi
    timeout "$limit" "$@"
}
RUN_TESTS=1
RUN_BENCH=1
BENCH_ARGS=""
TRAIN_MINUTES=""
TRAIN_ARGS=""
while [ $# -gt 0 ]; do
    case "$1" in
        --skip-tests) RUN_TESTS=0 ;;
        --skip-bench) RUN_BENCH=0 ;;
        --bench-args) BENCH_ARGS="$2"; shift ;;
        --train-minutes) TRAIN_MINUTES="$2"; shift ;;
        --train-args) TRAIN_ARGS="$2"; shift ;;
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
# No network there: never let a library wait on a download.
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1

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
# Dependencies of diffusers the machine may lack: installed one by one, only where the module is missing.
for wheel in .whl/if_missing/*.whl; do
    [ -e "$wheel" ] || continue
    module=$(basename "$wheel" | cut -d- -f1 | tr 'A-Z' 'a-z')
    if ! "$PY" -c "import $module" 2>/dev/null; then
        "$PY" -m pip install --quiet --no-index --no-deps --target "$SITE" "$wheel" >> "$OUT/env.txt" 2>&1 \
            && note "wheels: added missing $module" || note "wheels: FAILED to add missing $module"
    fi
done
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

# 2. training in the background (GPU shared with the tests, which only check correctness)
TRAIN_DIR=/tmp/shapes_gpu_run
TRAIN_PID=""
if [ -n "$TRAIN_MINUTES" ]; then
    TRAIN_TIMEOUT=${TRAIN_TIMEOUT:-$(python3 -c "print(int(float('$TRAIN_MINUTES') * 60 + 120))")}
    rm -rf "$TRAIN_DIR" && mkdir -p "$TRAIN_DIR"
    # shellcheck disable=SC2086
    timeout "$TRAIN_TIMEOUT" "$PY" experiments/train_shapes_model.py --device "${TRAIN_DEVICE:-cuda}" --workers 8 \
        --text-encoder .whl/minilm_fp16 --no-install --run-dir "$TRAIN_DIR" \
        --loss-log "$TRAIN_DIR/shapes_train_loss.csv" --time-budget-minutes "$TRAIN_MINUTES" $TRAIN_ARGS \
        > "$OUT/train.log" 2>&1 &
    TRAIN_PID=$!
    note "train: started ($TRAIN_MINUTES min budget)"
fi

# 3. tests on CUDA
if [ "$RUN_TESTS" = 1 ]; then
    PARALLEL=""
    "$PY" -c "import xdist" 2>/dev/null && PARALLEL="-n 6"
    # No autotuning in the tests: every tuned launch would compile four variants of each kernel.
    # shellcheck disable=SC2086
    PLADIS_TRITON_AUTOTUNE=0 within "$TEST_TIMEOUT" "$PY" -m pytest -m "triton or gpu" -q -p no:cacheprovider \
        $PARALLEL --durations=15 --ignore=tests/test_kernels_bench.py --ignore=tests/test_kernels_compile.py \
        --junitxml="$OUT/junit.xml" tests > "$OUT/pytest.txt" 2>&1
    rc=$?
    note "tests: exit $rc ($(tail -n 1 "$OUT/pytest.txt"))"
fi

if [ -n "$TRAIN_PID" ]; then
    wait "$TRAIN_PID"
    note "train: exit $? ($(tail -n 1 "$OUT/train.log"))"
    grep '"step"' "$OUT/train.log" | tail -n 2 >> "$STATUS"
    tar czf "$OUT/shapes_train.tar.gz" -C "$TRAIN_DIR" weights shapes_train_loss.csv shapes_train_loss.meta.json \
        >> "$STATUS" 2>&1 || note "train: nothing to pack"
fi

# 4. benchmark, alone on the GPU; the autotuner also tries register-capped launches (opt-in until measured: the
#    meta's kernel_launch_configs say whether it picked them)
if [ "$RUN_BENCH" = 1 ]; then
    # shellcheck disable=SC2086
    PLADIS_TRITON_REGISTER_CAP=${PLADIS_TRITON_REGISTER_CAP:-1} \
    within "$BENCH_TIMEOUT" "$PY" experiments/bench_cross_attention.py --out "$OUT/bench_cross_attention.csv" \
        $BENCH_ARGS > "$OUT/bench.log" 2>&1
    rc=$?
    note "bench: exit $rc"
    tail -n 26 "$OUT/bench.log" >> "$STATUS"
fi

# 5. where the host time of one kernel call goes (a diagnostic for the logs: a cProfile of 2000 calls at an
#    SDXL cross-attention shape, and the host time per call without the profiler)
if [ "$RUN_BENCH" = 1 ]; then
    within 120 "$PY" - > "$OUT/launch_profile.txt" 2>&1 <<'PYEOF'
import cProfile, pstats, time, torch
from pladis_analysis.attention import pladis_attention
from pladis_analysis.maps.kernels.cross_attention import call_plans, fused_pladis_attention
q = torch.randn(2, 20, 1024, 64, device="cuda", dtype=torch.bfloat16)
k = torch.randn(2, 20, 77, 64, device="cuda", dtype=torch.bfloat16)
call = lambda: fused_pladis_attention(q, k, k, pladis_scale=2.0, alpha=1.5)
public = lambda: pladis_attention(q, k, k, scale=2.0, alpha=1.5)   # the processors' path: dispatch included
def host_us(fn, n=2000):
    for _ in range(50):
        fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(n):
        fn()
    elapsed = (time.perf_counter() - start) / n * 1e6
    torch.cuda.synchronize()
    return elapsed
with torch.no_grad():
    print(f"host time per call, no profiler (queue not full at this shape?): {host_us(call):.1f} us")
    with call_plans(False):
        print(f"same, each call deriving its call plan: {host_us(call):.1f} us")
    print(f"pladis_attention (dispatch + kernel): {host_us(public):.1f} us")
    profile = cProfile.Profile()
    profile.enable()
    for _ in range(2000):
        call()
    profile.disable()
    torch.cuda.synchronize()
pstats.Stats(profile).sort_stats("tottime").print_stats(30)
PYEOF
    note "launch profile: exit $? ($(head -n 1 "$OUT/launch_profile.txt"))"
    if [ -f "$OUT/bench_cross_attention.meta.json" ]; then
        "$PY" -c "import json, sys; print('launch plans:', json.load(open(sys.argv[1])).get('kernel_launch_plans'))" \
            "$OUT/bench_cross_attention.meta.json" >> "$STATUS" 2>&1
    fi
fi

# 6. the threshold search's steps per row and per block, compiled (the bundled model's scores need its text
#    encoder, which only travels for training: random scores only)
if [ "$RUN_BENCH" = 1 ]; then
    within "$STEPS_TIMEOUT" "$PY" experiments/search_steps.py --sources random --out "$OUT" > "$OUT/search_steps.log" 2>&1
    note "search steps: exit $?"
fi

# 7. probes: statistics from the kernel (backend "auto" on CUDA) against the torch path, interleaved in one run;
#    the default launch, no autotuning (its compiles would take the stage's time)
if [ "$RUN_BENCH" = 1 ]; then
    PROBE_DIR=/tmp/probe_overhead
    rm -rf "$PROBE_DIR" && mkdir -p "$PROBE_DIR"
    PLADIS_TRITON_AUTOTUNE=0 within "$PROBE_TIMEOUT" "$PY" experiments/bench_probe_overhead.py --latent-sizes 64 \
        --repeats 3 --conditions stock probe_basic probe_basic_torch --out "$PROBE_DIR" > "$OUT/probe.log" 2>&1
    note "probe overhead: exit $?"
    tail -n 4 "$OUT/probe.log" >> "$STATUS"
    tar czf "$OUT/probe_overhead.tar.gz" -C "$PROBE_DIR" . >> "$STATUS" 2>&1 || note "probe overhead: nothing to pack"
fi

# At most 8 files come back: the logs travel as one archive.
(cd "$OUT" && tar czf logs.tar.gz --ignore-failed-read env.txt pytest.txt junit.xml bench.log train.log \
    launch_profile.txt search_steps.log probe.log 2>/dev/null
 rm -f env.txt pytest.txt junit.xml bench.log train.log launch_profile.txt search_steps.log probe.log)
cat "$STATUS"
