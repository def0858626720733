"""Text-to-image on MNIST-5k: the prompt pooled into one vector vs cross-attention on its tokens.

    python -m benchmarks.text_conditioning [--preset smoke|full] [--runs DIR] [--out DIR] [--json]

Trains the DDPM of experiments/ddpm_mnist.py twice with the one trainer, exactly as

    jaxnets train --config experiments/ddpm_mnist.py:smoke,text --workdir runs/ddpm_text
    jaxnets train --config experiments/ddpm_mnist.py:smoke,text,cross --workdir runs/ddpm_text_cross

(`--preset full` drops `smoke`; RUNS defaults to `runs`, so a finished run of those commands is
restored, not retrained, and the report is rerun on it: the same accuracies, checked; its wall_s
is then the restore and report, about 90 s each, and steps_s is null). The task's report samples 200 digits
per prompt template with classifier-free guidance and has the judge (experiments/mnist_cnn.py:
smoke, trained into RUNS/mnist_judge on first use, the experiment's default) classify them:
- seen: prompts "a handwritten {word}" (a template used in training);
- unseen: prompts "a drawing of the digit {word}" (a template never seen in training).
`class_accuracy` is the share of samples the judge reads as the requested digit (chance 0.1).

Writes to OUT (default benchmarks/results/text_conditioning/): results.json (the command, the
machine, per variant the metrics and wall time) and, per variant, grey-scale copies of the
run's samples.png, samples_unseen_template.png and reverse.png, plus forward.png (the noising
of one held-out digit; the same schedule for both). The last stdout line is JSON.
"""
from __future__ import annotations

import argparse
import os
import time

from benchmarks.common import RESULTS, full_report, trained_judge

VARIANTS = (("pooled", "text"), ("cross_attention", "text,cross"))
FIGURES = ("samples.png", "samples_unseen_template.png", "reverse.png")


def config_arg(preset: str, variant_arg: str, steps: int | None = None) -> str:
    return ",".join(filter(None, ["smoke" if preset == "smoke" else "", variant_arg,
                                  f"steps={steps}" if steps else ""]))


def train_variant(arg: str, variant_arg: str, runs: str) -> tuple[dict, str, float]:
    from jaxnets.cli import repo_dir
    from jaxnets.config import load_config
    from jaxnets.train.trainer import Trainer

    config = load_config(os.path.join(repo_dir("experiments"), "ddpm_mnist.py") + f":{arg}")
    config.evals.judge.judge_dir = os.path.join(runs, "mnist_judge")
    config.train.progress = False
    trained_judge(config.evals.judge.judge_dir)   # the evaluator loads it (as `jaxnets train` does)
    workdir = os.path.join(runs, "ddpm_" + "_".join(a for a in variant_arg.split(",")))
    t0 = time.time()
    final = Trainer(config, workdir).run()
    return final, workdir, time.time() - t0


def grey_copy(src: str, dst: str) -> None:
    """matplotlib writes RGBA; the figures are grey, so one channel keeps them ~4x smaller."""
    from PIL import Image

    Image.open(src).convert("L").save(dst, optimize=True)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="smoke", choices=("smoke", "full"))
    ap.add_argument("--runs", default="runs", help="workdirs (reused when finished) and the judge")
    ap.add_argument("--out", default=str(RESULTS / "text_conditioning"))
    ap.add_argument("--steps", type=int, default=None, help="training steps (default: the preset's)")
    ap.add_argument("--json", action="store_true", help="(the JSON line is always printed last)")
    args = ap.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    rows = []
    for name, variant_arg in VARIANTS:
        arg = config_arg(args.preset, variant_arg, args.steps)
        final, workdir, seconds = train_variant(arg, variant_arg, args.runs)
        m = final["metrics"]
        rows.append({"name": name, "config": f"experiments/ddpm_mnist.py:{arg}",
                     "workdir": workdir, "steps": final["step"],
                     "seen_class_accuracy": m["eval/class_accuracy"],
                     "unseen_class_accuracy": m["eval/unseen_template_class_accuracy"],
                     "seen_frechet": m["eval/frechet"], "unseen_frechet": m["eval/unseen_template_frechet"],
                     "eval_loss": m["eval/loss"], "state_bytes": final["parallel"]["state_bytes"],
                     "wall_s": round(seconds, 1), "steps_s": final.get("steps_s"),
                     "compile_s": final.get("compile_s")})
        for fig in FIGURES:
            grey_copy(os.path.join(workdir, fig), os.path.join(args.out, f"{name}_{fig}"))
        if name == "pooled":
            grey_copy(os.path.join(workdir, "forward.png"), os.path.join(args.out, "forward.png"))
        print(f"[{name}] seen {rows[-1]['seen_class_accuracy']:.3f}, unseen {rows[-1]['unseen_class_accuracy']:.3f}"
              f" ({seconds:.0f} s)", flush=True)
    return full_report("text_conditioning", argv, rows, os.path.join(args.out, "results.json"),
                       preset=args.preset)


if __name__ == "__main__":
    main()
