#!/usr/bin/env bash
# LSTM/GRU on one GPU: jaxnets' layers vs jax.experimental.rnn (cuDNN), upstream's lax.scan
# LSTM and torch.nn.LSTM/GRU (cuDNN), same weights, correctness checked in the same run
# (f32 at HIGHEST precision vs jaxnets), then fwd and fwd+bwd times, f32 and bf16.
#   bash benchmarks/gpu/lstm.sh            # on the GPU machine; budgeted for < 6 minutes
#   bash benchmarks/gpu/lstm.sh --tiny     # the same script on CPU at toy sizes (< 1 min)
# Logs and the JSON report go to $OUT (default /tmp/lstm_gpu); the table is printed last.
# Extra arguments go to `python -m benchmarks.lstm_gpu` (e.g. --runs 10 --kinds lstm).
set -uo pipefail
OUT="${OUT:-/tmp/lstm_gpu}"
mkdir -p "$OUT"
cd "$(dirname "$0")/../.."
PY="${PYTHON:-python3}"   # the GPU image's python3 is the one that holds torch
# A rerun on the same warm machine skips most compilation.
export JAX_COMPILATION_CACHE_DIR="${JAX_COMPILATION_CACHE_DIR:-/tmp/jax_cache_lstm_gpu}"
pip install --no-deps --no-build-isolation -e . > "$OUT/pip.log" 2>&1 || echo "pip install failed (see $OUT/pip.log); running from the checkout"
{ nvidia-smi || true; git rev-parse HEAD || true; date -u;
  "$PY" -c "import torch; print('torch', torch.__version__, torch.cuda.is_available())" || true;
  "$PY" -c "import jax; print(jax.__version__, jax.devices())"; } > "$OUT/environment.txt" 2>&1
# The benchmark starts no new row after --budget-s (torch keeps the last 20%); `timeout` is
# the hard stop below the 6-minute budget. Rows so far are in the JSON either way.
PYTHONUNBUFFERED=1 timeout 330 "$PY" -m benchmarks.lstm_gpu --json --budget-s 270 \
  --out "$OUT/lstm_gpu.json" "$@" > "$OUT/benchmark.log" 2>&1
status=$?
[ $status -ne 0 ] && { echo "benchmark exited with $status; last lines:"; tail -20 "$OUT/benchmark.log"; }
tail -1 "$OUT/environment.txt" 2>/dev/null
[ -f "$OUT/lstm_gpu.json" ] && "$PY" -m benchmarks.lstm_gpu --table "$OUT/lstm_gpu.json"
exit $status
