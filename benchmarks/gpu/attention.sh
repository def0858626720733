#!/usr/bin/env bash
# Attention on one GPU: correctness vs float32 xla, then TFLOP/s of pallas / cudnn / xla /
# the upstream Pallas kernel (bf16; fwd and fwd+bwd; causal or not; D 64, 128; T 1k, 4k, 16k).
#   bash benchmarks/gpu/attention.sh            # on the GPU machine; about 3-5 min on an H100
#   bash benchmarks/gpu/attention.sh --tiny     # the same script on CPU at toy sizes (~1 min)
# Logs and the JSON report go to $OUT (default /tmp/attention_gpu); the table is printed last.
set -uo pipefail
OUT="${OUT:-/tmp/attention_gpu}"
mkdir -p "$OUT"
cd "$(dirname "$0")/../.."
pip install --no-deps --no-build-isolation -e . > "$OUT/pip.log" 2>&1 || echo "pip install failed (see $OUT/pip.log); running from the checkout"
{ nvidia-smi || true; git rev-parse HEAD || true; date -u; python -c "import jax; print(jax.__version__, jax.devices())"; } \
  > "$OUT/environment.txt" 2>&1
# Hard limit below the 6-minute budget; partial rows are still in benchmark.log.
timeout 330 python -m benchmarks.attention --json --out "$OUT/attention_gpu.json" "$@" \
  > "$OUT/benchmark.log" 2>&1
status=$?
[ $status -ne 0 ] && { echo "benchmark exited with $status; last lines:"; tail -20 "$OUT/benchmark.log"; }
tail -1 "$OUT/environment.txt" 2>/dev/null
[ -f "$OUT/attention_gpu.json" ] && python -m benchmarks.attention --table "$OUT/attention_gpu.json"
exit $status
