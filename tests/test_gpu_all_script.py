"""`bash benchmarks/gpu/all.sh --tiny`: the prepared GPU run, end to end on CPU at toy sizes
(attention with its correctness checks, the LM and ResNet-50 train steps, the LSTM rows)."""
import json
import os
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_gpu_all_script_tiny_runs_on_cpu(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path), "JAX_COMPILATION_CACHE_DIR": str(tmp_path / "cache")}
    env.pop("XLA_FLAGS", None)   # the script's own processes: one CPU device each
    result = subprocess.run(["bash", os.path.join(ROOT, "benchmarks", "gpu", "all.sh"), "--tiny"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for name in ("attention", "lm_step", "resnet50_step", "lstm"):
        report = json.load(open(tmp_path / f"{name}.json"))
        assert report["results"], name
    steps = {r["name"]: r for name in ("lm_step", "resnet50_step")
             for r in json.load(open(tmp_path / f"{name}.json"))["results"]}
    assert steps["transformer_lm_tiny"]["tokens_per_s"] > 0
    assert steps["resnet50_tiny"]["examples_per_s"] > 0
