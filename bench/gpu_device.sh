#!/usr/bin/env bash
# The one command to give the device tool (carry: ["gpu_bundle"]): a throwaway venv that sees the machine's
# packages (torch, transformers, scikit-learn), the carried wheels installed into it offline, then the check
# under `timeout 480`. Results: $OUT/gpu_check/gpu_check.json, gpu_check.md and check.log.
# Usage: bash bench/gpu_device.sh [BUNDLE]      (BUNDLE: what bench/gpu_bundle.sh built; default gpu_bundle)
set -uo pipefail
cd "$(dirname "$0")/.."
BUNDLE=${1:-gpu_bundle}
RESULTS=${OUT:-/tmp/gpu_check_out}/gpu_check
VENV=/tmp/gpu_check_venv
mkdir -p "$RESULTS"
PARENT_SITE=$(python3 -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
python3 -m venv --system-site-packages "$VENV" || exit 1
# python3 may itself be a venv, whose packages --system-site-packages does not reach: point at them
if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  echo "$PARENT_SITE" > "$("$VENV/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")/parent-site.pth"
fi
"$VENV/bin/python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir "$BUNDLE"/wheels/*.whl || exit 1
PYTHONUNBUFFERED=1 timeout 480 "$VENV/bin/python" bench/gpu_check.py --bundle "$BUNDLE" --out "$RESULTS" \
  --work /tmp/gpu_check_work 2>&1 | tee "$RESULTS/check.log"
code=${PIPESTATUS[0]}
cp /tmp/gpu_check_work/train_py.log /tmp/gpu_check_work/agent_loop.log "$RESULTS/" 2>/dev/null
exit "$code"
