#!/usr/bin/env bash
# On a lent GPU machine (the device tool), after scripts/gpu/kit.sh here:
#   command "bash scripts/gpu/run.sh", carry [".gpu-kit"], timeout_s 600
# It runs the checks this CPU-only machine cannot, each into $OUT (logs and JSON):
#   1. the CUDA tests (tests/test_engine_cuda.py: training and the batched bank on the GPU
#      agree with PEFT on the CPU), about a minute;
#   2. make bench-serving on mint-s (issue 5: ours / bare base, ours / PEFT mixed batch);
#   3. make bench-training on mint-s, 3 rounds (issue 6: one shared pass vs 16 PEFT runs).
# GPU_STEPS="cuda serving" (say) runs a subset; SERVING_ARGS and TRAINING_ARGS replace the
# benches' arguments. Python 3.12 there, 3.11 here: the code runs from the working tree with
# the kit's wheels in front of the image's packages. A dry run here, on the CPU:
#   GPU_KIT_INSTALLED=1 PYTHON=.venv/bin/python SERVING_ARGS="--base micro --rounds 1"
#   TRAINING_ARGS="--base micro --people 2 --steps 3 --rounds 1" bash scripts/gpu/run.sh
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/gpu-out}
STEPS=${GPU_STEPS:-cuda serving training}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
if [ -d .gpu-kit/wheels ] && [ -z "${GPU_KIT_INSTALLED:-}" ]; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/gpu-site .gpu-kit/wheels/*.whl || exit 1
  export PYTHONPATH=/tmp/gpu-site
fi
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD" PYTHONUNBUFFERED=1
export MINT_VAR_DIR=${MINT_VAR_DIR:-/tmp/mint-gpu-var} DJANGO_SETTINGS_MODULE=mintweb.settings
mkdir -p "$MINT_VAR_DIR/bases"
[ -d "$MINT_VAR_DIR/bases/mint-s" ] || cp -r .gpu-kit/bases/mint-s "$MINT_VAR_DIR/bases/"
{ nvidia-smi -L 2>&1; "$PY" -c 'import torch, transformers, peft, django
print("torch", torch.__version__, "cuda", torch.cuda.is_available(), "transformers", transformers.__version__,
      "peft", peft.__version__, "django", django.__version__)'; } | tee "$OUT/versions.txt"

status=0
step() {  # name, then the command; its output is kept in $OUT/<name>.log
  local name=$1; shift
  case " $STEPS " in *" $name "*) ;; *) return 0 ;; esac
  echo "== $name: $*"
  local started=$SECONDS
  "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  tail -n 40 "$OUT/$name.log"
  echo "== $name: exit $rc after $((SECONDS - started)) s"
  [ $rc -eq 0 ] || status=$rc
}
step cuda "$PY" -m pytest tests/test_engine_cuda.py --noconftest -p no:django -p no:cacheprovider -q
"$PY" manage.py migrate -v0 || exit 1
# shellcheck disable=SC2086  # the ARGS are word lists
step serving "$PY" manage.py bench_serving ${SERVING_ARGS:---rounds 5} --json "$OUT/bench-serving.json"
# shellcheck disable=SC2086
step training "$PY" manage.py bench_training ${TRAINING_ARGS:---rounds 3} --json "$OUT/bench-training.json"
exit $status
