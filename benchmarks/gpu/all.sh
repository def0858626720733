#!/usr/bin/env bash
# Every GPU benchmark family in one prepared run on one H100/H200, budgeted for < 9 minutes:
#   1. attention: Pallas vs cuDNN (jax.nn.dot_product_attention) vs XLA, fwd and fwd+bwd, causal,
#      D 64/128, T 1k-16k, TFLOP/s, correctness against float32 XLA (benchmarks/speed/attention.py)
#   2. train steps in bf16 through the real trainer: the Transformer LM (tokens/s, MFU) and
#      ResNet-50 v1.5 at 224 px on a generated image folder (images/s) (benchmarks/speed/model_step.py)
#   3. LSTM/GRU: jaxnets' layers vs cuDNN via jax.experimental.rnn (benchmarks/speed/lstm_gpu.py)
#     bash benchmarks/gpu/all.sh            # on the GPU machine
#     bash benchmarks/gpu/all.sh --tiny     # the same script on CPU at toy sizes (CI)
# Logs and JSON reports go to $OUT (default /tmp/gpu_all), one folder per family; the tables are
# printed last. Every step has its own hard time limit, so one slow family cannot eat the others'.
set -uo pipefail
TINY=""
[ "${1:-}" = "--tiny" ] && TINY="--tiny"
OUT="${OUT:-/tmp/gpu_all}"
mkdir -p "$OUT"
cd "$(dirname "$0")/../.."
PY="${PYTHON:-python3}"
# Seconds per family: attention, LM step, ResNet-50 step, LSTM (sum < 9 min with start-up).
# --tiny (CI): fewer timed runs, LSTM only (GRU is the same code path at toy sizes).
if [ -n "$TINY" ]; then LIMITS=(240 180 300 150); STEP_RUNS="--runs 3"; RNN="--runs 2 --kinds lstm"
else LIMITS=(200 90 90 110); STEP_RUNS=""; RNN=""; fi
export JAX_COMPILATION_CACHE_DIR="${JAX_COMPILATION_CACHE_DIR:-/tmp/jax_cache_gpu_all}"
if [ -z "$TINY" ]; then
  pip install --no-deps --no-build-isolation -e . > "$OUT/pip.log" 2>&1 || echo "pip install failed (see $OUT/pip.log); running from the checkout"
fi
{ nvidia-smi || true; git rev-parse HEAD || true; date -u;
  "$PY" -c "import jax; print(jax.__version__, jax.devices())"; } > "$OUT/environment.txt" 2>&1
status=0
run() {   # run NAME LIMIT COMMAND...: log to $OUT/NAME.log, remember a failure, go on
  local name=$1 limit=$2; shift 2
  PYTHONUNBUFFERED=1 timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  if [ $rc -ne 0 ]; then status=$rc; echo "$name exited with $rc; last lines:"; tail -15 "$OUT/$name.log"; fi
}
run attention "${LIMITS[0]}" "$PY" -m benchmarks.attention --json --out "$OUT/attention.json" $TINY
run lm_step "${LIMITS[1]}" "$PY" -m benchmarks.model_step --model transformer_lm --json --out "$OUT/lm_step.json" $STEP_RUNS $TINY
# ResNet-50's inputs: a small generated ImageNet-layout folder (no download); the timed batch
# lives on the device, so decoding speed does not enter the figure.
"$PY" -m jaxnets.data.fixtures imagenet --out "$OUT/imagenet_fixture" --images 64 --classes 4 > "$OUT/fixture.log" 2>&1 \
  || { status=1; echo "fixture failed"; tail -5 "$OUT/fixture.log"; }
run resnet50_step "${LIMITS[2]}" "$PY" -m benchmarks.model_step --model resnet50 --json --out "$OUT/resnet50_step.json" \
  --set "data.options.root='$OUT/imagenet_fixture'" $STEP_RUNS $TINY
run lstm "${LIMITS[3]}" "$PY" -m benchmarks.lstm_gpu --json --budget-s $(( ${LIMITS[3]} - 30 )) --out "$OUT/lstm.json" $RNN $TINY
tail -1 "$OUT/environment.txt" 2>/dev/null
[ -f "$OUT/attention.json" ] && "$PY" -m benchmarks.attention --table "$OUT/attention.json"
for f in lm_step resnet50_step; do grep -v '^{' "$OUT/$f.log" 2>/dev/null | tail -1; done
[ -f "$OUT/lstm.json" ] && "$PY" -m benchmarks.lstm_gpu --table "$OUT/lstm.json"
exit $status
