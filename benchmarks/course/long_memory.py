"""The long-term-dependency claim, measured: SimpleRNN vs LSTM vs GRU on copy memory.

    python -m benchmarks.long_memory [--preset smoke|full] [--out DIR]

Task (`jaxnets.data.synthetic.copy_memory`): a few random symbols, `lag` blanks, a go marker,
then the model must emit the symbols it saw `lag + num_copy + 1` steps earlier; chance is
1 / num_symbols. Every run goes through the one trainer (`jaxnets.train.Trainer`, task
`sequence_labeling`, model `rnn_tagger`, unidirectional), Adam with global-norm clipping.

Writes to DIR (default benchmarks/results/long_memory/):
- results.json: held-out accuracy of the recalled symbols per (cell, lag), the gradient norms
  per timestep, and the exploding/clipped training curves;
- accuracy_vs_lag.png: accuracy against lag per cell (the plain RNN falls to chance first);
- grad_norm_vs_time.png: |dL/dx_t| for the input at each step t, L the loss at the answer
  steps, for models at initialisation and after training on the longest lag. Measured
  (smoke, lag 60): after training the plain RNN's gradient reaching the symbol steps has
  vanished (~1e-15, accuracy at chance) while the GRU's is ~1e-2 (accuracy 1.0). At
  initialisation the picture is reversed: the orthogonal W_h keeps the plain RNN nearly
  norm-preserving, while the initial gates (forget ~0.73 with bias 1, update z = 0.5)
  make the gated cells' gradients decay geometrically until training opens them;
- exploding_clipping.png: a tanh RNN whose recurrent matrix is scaled by 1.5 at init
  (spectral radius 1.5), lag 20, plain SGD at lr 0.5: without clipping the large gradient
  steps throw the weights into saturation and training stalls above chance-level loss
  (measured: accuracy 0.36); with global-norm clipping at 1.0 the same run learns (0.91).

Smoke: 5 variants x 3 lags x 400 steps (1,000 for lstm_chrono) + 2 clipping runs. Measured
2026-12-02 pinned to one core of a quiet machine (`taskset -c 1`): 109 s wall (1,359 s on the
2-core CPU at load average ~18; each run is mostly compilation).
Measured accuracy (smoke): rnn 1.00 / 0.45 / 0.23 at lags 5 / 20 / 60; lstm (forget bias 1)
1.00 / 0.26 / 0.26; lstm (forget bias 3) 1.00 / 0.97 / 0.26; lstm (chrono init, 1,000 steps)
1.00 / 1.00 / 1.00; gru 1.00 / 1.00 / 1.00; chance 0.25. Exploding: 0.36 without clipping,
0.91 with it. The LSTM does solve lag 60 as the course claims, once its gates start with
time scales as long as the lag (chrono: `LSTM(..., forget_bias="chrono", chrono_max=T)`,
here T = lag + 2 * num_copy + 1, the task's whole span) and it gets 2.5x the GRU's steps
(VARIANTS below).
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxnets.train import Trainer
from jaxnets.train.defaults import base_config


# Variants: name -> (cell, cell options, steps (None: the preset's)). The LSTM runs three
# times: forget-gate bias 1 (the usual default), 3 (memories start held for ~20 steps) and
# chrono init. What the LSTM recipe lacked at lag 60 (measured, smoke, 400 steps at lr 1e-2
# unless said): forget bias 1 or 3 -> chance (0.26); forget bias 3 at lr 3e-3 -> 0.55 (400
# steps) and 0.57 (1,000); chrono init -> 0.60 (400 steps) and 1.00 (1,000 steps). Both the
# initialisation (time scales as long as the lag) and a longer budget than the GRU's are needed.
VARIANTS = {"rnn": ("rnn", {}, None), "lstm": ("lstm", {"forget_bias": 1.0}, None),
            "lstm_forget3": ("lstm", {"forget_bias": 3.0}, None),
            "lstm_chrono": ("lstm", {"forget_bias": "chrono"}, 1000),
            "gru": ("gru", {}, None)}

PRESETS = {
    "smoke": dict(lags=[5, 20, 60], cells=["rnn", "lstm", "lstm_forget3", "lstm_chrono", "gru"], steps=400, hidden=64,
                  num_symbols=4, num_copy=3, num_train=4000, lr=1e-2, explode_steps=150),
    "full": dict(lags=[5, 10, 20, 50, 100, 200], cells=["rnn", "lstm", "lstm_forget3", "lstm_chrono", "gru"], steps=3000,
                 hidden=128, num_symbols=8, num_copy=5, num_train=20000, lr=3e-3, explode_steps=500),
}


def make_config(p, cell, lag, *, steps, clip=1.0, lr=None, cell_options=None, optim="adam"):
    c = base_config()
    c.task = "sequence_labeling"
    c.data.name = "copy_memory"
    c.data.options = {"lag": lag, "num_symbols": p["num_symbols"], "num_copy": p["num_copy"],
                      "num_train": p["num_train"], "num_test": 512}
    c.data.batch_size = 64
    c.data.eval_batch_size = 256
    c.data.prefetch = 0
    c.model = {"name": "rnn_tagger", "cell": cell, "embed_dim": 16, "hidden": p["hidden"],
               "bidirectional": False, "cell_options": cell_options or {}}
    c.optim.name = optim
    c.optim.lr = lr or p["lr"]
    c.optim.clip_norm = clip
    c.train.steps = steps
    c.train.log_every = 10
    c.train.eval_every = steps
    c.train.checkpoint_every = steps
    c.train.report = False
    c.train.progress = False
    c.mesh_devices = 1
    return c


def grad_norm_per_step(model, batch):
    """|dL/de_t| for the embedded input e_t at every step t, L the summed answer-step loss."""
    enc = model.encoder
    weights = jnp.asarray(batch["label_mask"])

    def loss(e):
        y, _ = enc.rnn(e)
        logits = model.head(y)
        nll = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.asarray(batch["labels"]))
        return jnp.sum(nll * weights) / e.shape[0]

    g = jax.grad(loss)(enc.embed(jnp.asarray(batch["tokens"])))
    return np.sqrt(np.sum(np.asarray(g) ** 2, axis=(0, 2)))


def read_metrics(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    return [r for r in rows if "train/loss" in r]


def run_one(config, workdir):
    t = time.time()
    trainer = Trainer(config, workdir)
    # A real copy: the trainer donates its state buffers to the train step.
    graphdef, params = nnx.split(trainer.module().model)
    model_at_init = nnx.merge(graphdef, jax.tree.map(lambda a: jnp.array(a, copy=True), params))
    final = trainer.run()
    return final, model_at_init, trainer.module().model, trainer.dataset, time.time() - t


def plot(out, results, p):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for cell in p["cells"]:
        acc = [results["accuracy"][cell][str(lag)] for lag in p["lags"]]
        ax.plot(p["lags"], acc, "o-", label=cell)
    ax.axhline(1 / p["num_symbols"], color="gray", ls=":", label="chance")
    ax.set(xscale="log", xlabel="lag T (steps between symbol and recall)", ylabel="held-out accuracy",
           title="Copy memory: accuracy vs lag")
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(out, "accuracy_vs_lag.png"), dpi=120)

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5), sharey=True)
    for ax, when in zip(axes, ["init", "trained"]):
        for cell in p["cells"]:
            g = np.asarray(results["grad_norm"][when][cell])
            ax.semilogy(np.arange(len(g)), g + 1e-30, label=cell)
        ax.set(xlabel="input timestep t", title=f"|dL/dx_t|, lag {max(p['lags'])}, {when}")
    axes[0].set_ylabel("gradient norm")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(os.path.join(out, "grad_norm_vs_time.png"), dpi=120)

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for name, curve in results["exploding"].items():
        steps = [r["step"] for r in curve]
        axes[0].semilogy(steps, [r["train/grad_norm"] for r in curve], label=name)
        axes[1].semilogy(steps, [r["train/loss"] for r in curve], label=name)
    axes[0].set(xlabel="step", title="gradient norm (before clipping)")
    axes[1].set(xlabel="step", title="training loss")
    axes[1].legend()
    fig.tight_layout()
    fig.savefig(os.path.join(out, "exploding_clipping.png"), dpi=120)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="smoke", choices=sorted(PRESETS))
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.dirname(__file__)), "results", "long_memory"))
    args = ap.parse_args()
    p = PRESETS[args.preset]
    os.makedirs(args.out, exist_ok=True)
    results = {"preset": args.preset, "settings": p, "accuracy": {}, "sequence_accuracy": {},
               "seconds": {}, "grad_norm": {"init": {}, "trained": {}}, "exploding": {}}
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        for cell in p["cells"]:
            for lag in p["lags"]:
                wd = os.path.join(tmp, f"{cell}_{lag}")
                kind, options, steps = VARIANTS[cell]
                if options.get("forget_bias") == "chrono":   # time scales up to the task's whole span
                    options = dict(options, chrono_max=lag + 2 * p["num_copy"] + 1)
                cfg = make_config(p, kind, lag, steps=steps or p["steps"], cell_options=options)
                final, init_model, model, ds, secs = run_one(cfg, wd)
                m = final["metrics"]
                results["accuracy"].setdefault(cell, {})[str(lag)] = m["eval/accuracy"]
                results["sequence_accuracy"].setdefault(cell, {})[str(lag)] = m["eval/sequence_accuracy"]
                results["seconds"][f"{cell}_{lag}"] = secs
                print(f"{cell:12s} lag {lag:4d}: accuracy {m['eval/accuracy']:.3f} ({secs:.0f} s)", flush=True)
                if lag == max(p["lags"]):
                    batch = {k: v[:256] for k, v in ds.splits["test"].items()}
                    results["grad_norm"]["init"][cell] = grad_norm_per_step(init_model, batch).tolist()
                    results["grad_norm"]["trained"][cell] = grad_norm_per_step(model, batch).tolist()
        explode = {"activation": "tanh", "recurrent_gain": 1.5}
        for name, clip in [("no clipping", 0.0), ("clip_by_global_norm 1.0", 1.0)]:
            wd = os.path.join(tmp, f"explode_{clip}")
            cfg = make_config(p, "rnn", 20, steps=p["explode_steps"], clip=clip, lr=0.5, optim="sgd",
                              cell_options=explode)
            final, *_ = run_one(cfg, wd)
            curve = read_metrics(wd)
            results["exploding"][name] = [{k: r[k] for k in ("step", "train/loss", "train/grad_norm")}
                                          for r in curve]
            results["accuracy"][f"exploding ({name})"] = final["metrics"]["eval/accuracy"]
            print(f"tanh rnn W_h x1.5, sgd 0.5, {name}: max grad norm {max(r['train/grad_norm'] for r in curve):.3g}, "
                  f"final loss {curve[-1]['train/loss']:.3g}", flush=True)
    results["total_seconds"] = time.time() - t0
    results["device"] = f"cpu jax {jax.__version__} cores={os.cpu_count()}"
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(results, f, indent=1, default=float)
    plot(args.out, results, p)
    summary = [{"name": f"{cell}_lag{lag}", "accuracy": results["accuracy"][cell][str(lag)]}
               for cell in p["cells"] for lag in p["lags"]]
    print(json.dumps({"benchmark": "long_memory", "device": results["device"], "results": summary}))


if __name__ == "__main__":
    main()
