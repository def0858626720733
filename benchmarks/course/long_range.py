"""Long-range dependencies on one seq2seq task, every sequence model: RNN -> LSTM/GRU -> attention.

    python -m benchmarks.long_range [--preset smoke|full] [--json] [--out DIR]

Task (`sequence_copy`, jaxnets/data/synthetic.py): copy a random string of exactly L letters
(8-letter alphabet); output position t needs input position t, i.e. information that entered
the encoder L steps before the decoder starts. Models (all through the one trainer):
- `rnn`, `lstm`, `gru`: bidirectional encoder -> decoder started from the encoder's final state
  and nothing else (`Seq2SeqLSTM(cell=..., attention=False)`): the whole string must pass
  through one fixed-size vector;
- `lstm_attention`, `gru_attention`: the same plus Luong attention over the encoder outputs;
- `transformer`: the encoder-decoder Transformer (jaxnets/models/transformer.py).
Sequence accuracy = the greedy decode of the whole held-out string is exactly right; token
accuracy = fraction of right letters in the greedy decodes (1,000 held-out strings never seen
in training). Writes DIR (default benchmarks/results/long_range/): results.json,
accuracy_vs_length.png and attention_map.png (lstm_attention at the longest L: the decoder
attends along the diagonal, the alignment a fixed-size context cannot express).

Measured (smoke, 600 steps of batch 64 per run, 2026-12-02, pinned to one quiet core, 460 s in
all), sequence accuracy (greedy token accuracy) at L=40: rnn 0.000 (0.44), lstm 0.000 (0.17),
gru 0.000 (0.21), lstm_attention 0.996 (0.999), gru_attention 0.998 (1.000), transformer 1.000
(1.000). At L=10: rnn 0.999, lstm 0.953, gru 0.839, lstm_attention, gru_attention and
transformer 1.000. Training time per L=40 run: rnn 15 s, lstm 36, gru 32, lstm_attention 58,
gru_attention 52, transformer 125 (226-731 s each on the 2-core CPU at load average ~18, where
the first measurement gave the same picture: 0.000 without attention, 0.999 with it and for the
Transformer); a finished run in WORKDIR is restored, not retrained, on a rerun.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from benchmarks.common import device_name, report
from jaxnets import options
from jaxnets.train.defaults import base_config
from jaxnets.train.trainer import Trainer

MODELS = ("rnn", "lstm", "gru", "lstm_attention", "gru_attention", "transformer")
PRESETS = {
    # Two lengths keep the smoke within its budget (each L=40 run took 4-9 min at load ~18);
    # at L=10 every model copies, at L=40 only attention does. The full preset fills in.
    "smoke": {"lengths": (10, 40), "steps": 600, "hidden": 128, "num_train": 20000},
    "full": {"lengths": (10, 20, 40, 80, 120), "steps": 4000, "hidden": 256, "num_train": 50000},
}


def make_config(preset: dict, name: str, length: int, seed: int = 0):
    c = base_config()
    c.seed = seed
    c.task = "seq2seq"
    c.data.name = "sequence_copy"
    c.data.options = {"length": length, "num_train": preset["num_train"], "num_test": 1000}
    c.data.batch_size = 64
    c.data.eval_batch_size = 500
    c.data.prefetch = 0
    if name == "transformer":
        c.model = {"name": "transformer", "d_model": 128, "num_heads": 4, "num_layers": 2,
                   "d_ff": 256, "dropout": 0.0, "positions": "sinusoidal",
                   "max_decode_len": length + 2}
        c.optim.name, c.optim.lr, c.optim.b2 = "adamw", 1e-3, 0.98
    else:
        cell, _, attention = name.partition("_")
        c.model = {"name": "seq2seq_lstm", "cell": cell, "attention": bool(attention),
                   "embed_dim": 32, "hidden": preset["hidden"], "bidirectional_encoder": True}
        c.optim.name, c.optim.lr = "adam", 3e-3
    c.optim.schedule = "warmup_cosine"
    c.optim.warmup_steps = 100
    c.optim.clip_norm = 1.0
    c.train.steps = preset["steps"]
    c.train.log_every = 100
    c.train.eval_every = preset["steps"]
    c.train.checkpoint_every = preset["steps"]
    c.train.keep_checkpoints = 1
    c.train.progress = False
    c.train.report = False
    options.validate(c)   # the tasks read their declared defaults for options left out
    return c


def greedy_accuracy(trainer: Trainer) -> dict:
    """Greedy-decode every held-out string; sequence and per-letter accuracy."""
    task, split = trainer.task, trainer.dataset.splits["test"]
    source, target = jnp.asarray(split["source"]), np.asarray(split["target"])[:, 1:]
    graphdef, state = nnx.split(trainer.module().model)
    decode = jax.jit(lambda s, src: task.greedy_decode(nnx.merge(graphdef, s), src, target.shape[1]))
    pred = np.concatenate([np.asarray(decode(state, source[i:i + 500]))
                           for i in range(0, len(source), 500)])
    keep = target != task.pad_id          # the letters and the EOS
    right = (pred == target) & keep
    return {"sequence_accuracy": float(np.mean(right.sum(1) == keep.sum(1))),
            "token_accuracy": float(right.sum() / keep.sum())}


def attention_map(trainer: Trainer, index: int = 0) -> tuple[np.ndarray, str, str]:
    model = trainer.module().model
    split = trainer.dataset.splits["test"]
    source = jnp.asarray(split["source"][index:index + 1])
    target_in = jnp.asarray(split["target"][index:index + 1, :-1])
    memory, mask, state = model.encode(source)
    h, _ = model.decoder(model.embed(target_in), initial_state=state)
    weights = np.asarray(model.attention_weights(h, memory, mask))[0]
    vocab = trainer.dataset.info["vocab"]
    text = lambda ids: "".join(vocab[i] for i in np.asarray(ids) if i > 2)   # noqa: E731
    return weights, text(split["source"][index]), text(split["target"][index])


def _finished(workdir: str, config) -> bool:
    path = os.path.join(workdir, "final.json")
    if not os.path.isfile(path):
        return False
    with open(path) as f:
        final = json.load(f)
    saved = os.path.join(workdir, "checkpoints")
    return final.get("step") == config.train.steps and os.path.isdir(saved)


def run_one(preset, name, length, workroot):
    workdir = os.path.join(workroot, f"{name}_L{length}")
    config = make_config(preset, name, length)
    if not _finished(workdir, config):   # a finished run of this config is restored, not retrained
        shutil.rmtree(workdir, ignore_errors=True)
    t0 = time.time()
    trainer = Trainer(config, workdir)
    final = trainer.run()
    acc = greedy_accuracy(trainer)
    row = {"name": name, "length": length, **acc,
           "eval_exact_match": final["metrics"]["eval/exact_match"],   # the task's own greedy eval
           "teacher_forced_token_accuracy": final["metrics"]["eval/token_accuracy"],
           "params": sum(int(np.prod(x.shape)) for x in jax.tree.leaves(
               nnx.state(trainer.module().model, nnx.Param))),
           "steps": final["step"], "seconds": time.time() - t0}
    print(f"  {name} L={length}: sequence_accuracy={acc['sequence_accuracy']:.3f} "
          f"token_accuracy={acc['token_accuracy']:.3f} ({row['seconds']:.0f}s)", flush=True)
    return row, trainer


def plot(out, rows, amap):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(11, 4))
    for i, name in enumerate(MODELS):
        mine = sorted((r for r in rows if r["name"] == name), key=lambda r: r["length"])
        if mine:
            style = "-" if ("attention" in name or name == "transformer") else "--"
            for a, key in zip(ax, ("sequence_accuracy", "token_accuracy")):
                a.plot([r["length"] for r in mine], [r[key] for r in mine], style, marker="o",
                       color=f"C{i}", label=name)
    for a, key in zip(ax, ("sequence accuracy (whole string right)", "token accuracy (greedy)")):
        a.set(xlabel="sequence length L (copy task)", ylabel=key, ylim=(-0.02, 1.02))
        a.legend(fontsize=8)
    ax[0].set_title("Fixed-size context (dashed) vs attention (solid)")
    fig.tight_layout()
    fig.savefig(os.path.join(out, "accuracy_vs_length.png"), dpi=120)
    plt.close(fig)
    if amap is not None:
        weights, src, tgt = amap
        fig, a = plt.subplots(figsize=(6.5, 6))
        a.imshow(weights[:len(tgt)], cmap="viridis", aspect="auto")
        a.set_xticks(range(len(src)), list(src), fontsize=6)
        a.set_yticks(range(len(tgt)), list(tgt), fontsize=6)
        a.set(xlabel="source letter (encoder position)", ylabel="decoder output letter",
              title=f"lstm_attention, L={len(src)}: attention weights")
        fig.tight_layout()
        fig.savefig(os.path.join(out, "attention_map.png"), dpi=120)
        plt.close(fig)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="smoke", choices=sorted(PRESETS))
    parser.add_argument("--json", action="store_true", help="(the JSON line is always printed last)")
    parser.add_argument("--out", default="benchmarks/results/long_range")
    parser.add_argument("--workdir", default="/tmp/jaxnets_long_range")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--lengths", default="", help="comma-separated, default: the preset's")
    args = parser.parse_args(argv)
    preset = dict(PRESETS[args.preset])
    lengths = tuple(int(x) for x in args.lengths.split(",") if x) or preset["lengths"]
    os.makedirs(args.out, exist_ok=True)
    t0 = time.time()
    rows, amap = [], None
    # Longest first: the acceptance numbers exist early; results.json is rewritten after each run.
    for length in sorted(lengths, reverse=True):
        for name in args.models.split(","):
            row, trainer = run_one(preset, name, length, args.workdir)
            rows.append(row)
            if name == "lstm_attention" and length == max(lengths):
                amap = attention_map(trainer)
            with open(os.path.join(args.out, "results.json"), "w") as f:
                json.dump({"benchmark": "long_range", "preset": args.preset, "device": device_name(),
                           "seconds": time.time() - t0, "complete": len(rows) == len(lengths) * len(
                               args.models.split(",")), "results": rows}, f, indent=1)
            plot(args.out, rows, amap)
    print(f"total {time.time() - t0:.0f}s", flush=True)
    report("long_range", rows)


if __name__ == "__main__":
    main()
