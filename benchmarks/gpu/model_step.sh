#!/usr/bin/env bash
# Train steps on one GPU: Transformer LM (tokens/s, TFLOP/s, MFU; bf16, fused attention) and
# ResNet-56 (images/s; bf16), through the real trainer.
#   bash benchmarks/gpu/model_step.sh            # on the GPU machine; about 2-4 min
#   bash benchmarks/gpu/model_step.sh --tiny     # the same script on CPU at toy sizes
# Logs and JSON go to $OUT (default /tmp/model_step_gpu); the table is printed last.
set -uo pipefail
OUT="${OUT:-/tmp/model_step_gpu}"
mkdir -p "$OUT"
cd "$(dirname "$0")/../.."
pip install --no-deps --no-build-isolation -e . > "$OUT/pip.log" 2>&1 || echo "pip install failed (see $OUT/pip.log); running from the checkout"
{ nvidia-smi || true; git rev-parse HEAD || true; date -u; python -c "import jax; print(jax.__version__, jax.devices())"; } \
  > "$OUT/environment.txt" 2>&1
status=0
for model in transformer_lm resnet; do
  timeout 170 python -m benchmarks.model_step --model "$model" --json --out "$OUT/$model.json" "$@" \
    > "$OUT/$model.log" 2>&1 || { status=$?; echo "$model exited with $status"; tail -20 "$OUT/$model.log"; }
done
tail -1 "$OUT/environment.txt" 2>/dev/null
for model in transformer_lm resnet; do grep -v '^{' "$OUT/$model.log" | tail -1; done
exit $status
