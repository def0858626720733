"""Encoder-decoder Transformer on the synthetic addition ("123+45" -> "168") or reversal task,
greedy KV-cached decoding at evaluation.

    jaxnets train --config experiments/transformer_seq2seq.py:smoke --workdir runs/transformer_seq2seq
Expect held-out eval/exact_match >= 0.99 and WORKDIR/decoded.txt. Attention maps of the trained
model: `python experiments/transformer_seq2seq.py WORKDIR smoke`. Reversal: `:smoke,task=reversal`;
full: drop `smoke`. Measured figures: benchmarks/results/experiment_notes.md.
"""
from jaxnets.config import parse_arg
from jaxnets.train.defaults import base_config


def get_config(arg=None):
    args = parse_arg(arg)
    smoke = args.get("smoke", False)
    task = args.get("task", "addition")
    c = base_config()
    c.task = "seq2seq"
    c.data.name = task
    c.data.options = {"num_train": 20000, "num_test": 1000}
    if task == "addition" and not smoke:
        c.data.options["max_digits"] = 4
    c.data.batch_size = 128
    c.data.eval_batch_size = 500
    c.model = {"name": "transformer", "d_model": 128, "num_heads": 4,
               "num_layers": 2 if smoke else 4, "d_ff": 512, "dropout": 0.0 if smoke else 0.1,
               "positions": "sinusoidal", "max_decode_len": 32}
    c.optim.name = "adamw"
    c.optim.lr = 1e-3
    c.optim.b2 = 0.98
    c.optim.schedule = "warmup_cosine"
    c.optim.warmup_steps = 200
    c.optim.weight_decay = 0.01
    c.optim.clip_norm = 1.0
    c.train.steps = 1500 if smoke else 6000
    c.train.log_every = 100
    c.train.eval_every = 500 if smoke else 1000
    c.train.checkpoint_every = c.train.steps
    return c


def plot_attention_maps(workdir, arg="smoke", examples=3):
    """Cross-attention of a trained model: which source characters each output step reads.

    Restores the latest checkpoint in `workdir` (trained with the same config `arg`), greedily
    decodes a few held-out sources, re-runs the decoder on its own output with the attention
    probabilities recorded, and writes WORKDIR/attention_maps.png (rows: examples; columns:
    decoder layers; heads averaged).
    """
    import jax.numpy as jnp
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from jaxnets.train import checkpoint as ckpt
    from jaxnets.train.trainer import Trainer

    config = get_config(arg)
    trainer = Trainer(config, workdir)
    trainer.restore_latest(ckpt.Checkpointer(workdir, config.train.keep_checkpoints))
    model, task = trainer.module().model, trainer.task
    split = trainer.dataset.splits[config.data.eval_split]
    source = jnp.asarray(split["source"][:examples])
    predicted = task.greedy_decode(model, source, split["target"].shape[1] - 1)
    target_in = jnp.concatenate([jnp.full((examples, 1), task.bos_id), predicted[:, :-1]], 1)
    for layer in model.decoder.layers:
        layer.cross_attention.sow_weights = True
    model(source, target_in)
    maps = [layer.cross_attention.attention_weights[0] for layer in model.decoder.layers]
    vocab = trainer.dataset.info["vocab"]
    n_layers = len(maps)
    fig, axes = plt.subplots(examples, n_layers, figsize=(3.2 * n_layers, 2.8 * examples),
                             squeeze=False)
    for row in range(examples):
        src = [vocab[i] for i in split["source"][row] if i != task.pad_id]
        out = [vocab[int(i)] for i in predicted[row]]
        n_out = out.index("<eos>") + 1 if "<eos>" in out else len(out)
        for col, weights in enumerate(maps):
            ax = axes[row, col]
            ax.imshow(weights[row].mean(0)[:n_out, :len(src)], cmap="viridis", vmin=0, vmax=1)
            ax.set_xticks(range(len(src)), src)
            ax.set_yticks(range(n_out), out[:n_out])
            ax.set_title(f"example {row}, decoder layer {col}", fontsize=8)
    fig.tight_layout()
    path = f"{workdir}/attention_maps.png"
    fig.savefig(path, dpi=110)
    print("wrote", path)
    return path


if __name__ == "__main__":  # python experiments/transformer_seq2seq.py WORKDIR [config arg]
    import sys
    plot_attention_maps(sys.argv[1], *(sys.argv[2:3] or ["smoke"]))
