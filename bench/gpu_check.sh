#!/usr/bin/env bash
# One short GPU check (under 8 minutes on one H100): seed 004's network at 224 px trained for a
# fixed number of steps with mixed precision and channels-last, against the bare training loop
# on the same batches; 1,000 studies scored from PNG files against the bare forward. Prints the
# images/s and ratios. `bench/gpu_check.sh --dry-run` runs the same code on the CPU at tiny sizes.
# Other options: --steps N --batch N --studies N --workers N (bench/gpu_check.py --help).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || command -v python3 )}"
exec "$PYTHON" bench/gpu_check.py "$@"
