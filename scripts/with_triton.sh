#!/usr/bin/env bash
# Run a command with another Triton version first on the Python path, without touching .venv: the offline
# compile experiments (experiments/kernel_builds.py, experiments/kernel_resources.py) record which Triton built
# each row, and register allocation differs between versions.
#
#   scripts/with_triton.sh 3.6.0 python experiments/kernel_builds.py
#
# The wheel (this machine's platform and Python; ~190 MB, from the package index) is unpacked once into the
# git-ignored .triton/VERSION/. "python" in the command means .venv's interpreter.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -lt 2 ]; then
    echo "usage: $0 TRITON_VERSION COMMAND [ARGS...]" >&2
    exit 2
fi
version=$1; shift
PY=${PY:-.venv/bin/python}
target=.triton/$version
if [ ! -f "$target/.complete" ]; then
    rm -rf "$target"
    "$PY" -m pip install --quiet --no-deps --only-binary=:all: --target "$target" "triton==$version"
    touch "$target/.complete"
fi
found=$(PYTHONPATH="$target" "$PY" -c "import triton; print(triton.__version__)")
if [ "$found" != "$version" ]; then
    echo "$target holds Triton $found, not $version" >&2
    exit 1
fi
if [ "$1" = "python" ]; then
    shift
    set -- "$PY" "$@"
fi
PYTHONPATH="$PWD/$target${PYTHONPATH:+:$PYTHONPATH}" exec "$@"
