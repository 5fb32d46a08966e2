#!/usr/bin/env bash
# The GPU check (benchmarks/README.md, "GPU check"): on a bare CUDA machine with torch, timm, torchvision,
# torchaudio, pyarrow and numpy, install the rest from the wheels carried in benchmarks/wheels, then run
# benchmarks/gpu_check.py, which writes $OUT/gpu_check.json (OUT defaults to ./gpu_check_out).
#   benchmarks/gpu_check.sh                 # on the GPU machine (about 5 minutes on one H200, estimated)
#   benchmarks/gpu_check.sh --cpu-dry-run   # anywhere: every step on the CPU at tiny sizes
# Extra arguments go to gpu_check.py (--help lists them).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=${OUT:-$PWD/gpu_check_out}
export OUT
mkdir -p "$OUT"

# Wheels: pure Python or abi3, so any CPython >= 3.10 on x86_64 Linux takes them. Only what is missing is
# installed (--no-deps: webdataset's pyyaml comes with timm). safetensors normally comes with timm too.
for pair in webdataset:webdataset braceexpand:braceexpand tqdm:tqdm safetensors:safetensors; do
  mod=${pair%%:*}; dist=${pair##*:}
  if ! "$PY" -c "import $mod" 2>/dev/null; then
    "$PY" -m pip install --quiet --no-index --no-deps benchmarks/wheels/"$dist"-*.whl
  fi
done

# avtta itself, from this checkout without building anything: a tree of symlinks in the installed layout
# (pyproject package-dir: avtta/ holds the root package, the top-level folders are its sub-packages) on
# PYTHONPATH, which every subprocess (DataLoader workers, spawn pools) inherits and which shadows an installed avtta.
SITE=$(mktemp -d)
mkdir "$SITE/avtta"
for f in avtta/*; do ln -s "$PWD/$f" "$SITE/avtta/"; done
for pkg in pipelines shards manifests models adapt corruptions; do ln -s "$PWD/$pkg" "$SITE/avtta/$pkg"; done
export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
"$PY" -c "import avtta, torch; print('gpu_check: avtta from', avtta.__path__[0], '| torch', torch.__version__)"

status=0
"$PY" benchmarks/gpu_check.py --out "$OUT" "$@" || status=$?
rm -rf "$SITE"
exit $status
