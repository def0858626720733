"""Commands on a trained workdir: each reads the workdir's config and newest checkpoint.

    jaxnets eval --workdir W [--split test]
    jaxnets sample --workdir W --num 100 [--out samples.png] [--steps 40] [--guidance 4]
                   [--label 3 | --prompt "a handwritten three"] [--seed 0]
    jaxnets generate --workdir W --prompt "ROMEO:" --length 300 [--temperature 0.8] [--seed 0]
    jaxnets translate --workdir W "12+34" [--beam 4]
    jaxnets export --workdir W --out DIR

The model is rebuilt by the trainer itself (`Trainer(config, workdir)` + its restore), from
the config the checkpoint's metadata recorded, so a workdir is all these commands need.
Which commands fit which model is decided by what the task and model can do (a sampler, a
KV cache, a decoder), not by names. Bad input is one line and exit status 2.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys

from jaxnets import storage
from jaxnets.errors import UserError

MAX_SAMPLES = 2500      # sample: one 50 x 50 grid
MAX_GENERATE = 100_000  # generate: characters


# ---------------------------------------------------------------------------- the workdir
def read_workdir_config(workdir: str):
    """(config, step) of the newest checkpoint whose metadata parses, read as JSON (no JAX backend
    starts here). Nothing in the workdir is changed."""
    import ml_collections

    root = storage.join(workdir, "checkpoints")
    if not storage.isdir(workdir):
        raise UserError(f"Workdir {workdir!r} does not exist; pass the --workdir of a `jaxnets train` run.")
    steps = sorted(int(d) for d in storage.listdir(root) if d.isdigit()
                   and storage.exists(storage.join(root, d, "meta", "metadata")))
    for step in reversed(steps):
        try:
            meta = json.loads(storage.read_text(storage.join(root, str(step), "meta", "metadata")))
            config = ml_collections.ConfigDict(json.loads(meta["config"]))
        except (ValueError, KeyError, TypeError) as e:   # damaged: the restore falls back past it
            print(f"Checkpoint {root}/{step} has unreadable metadata ({type(e).__name__}); "
                  "reading an older one.", file=sys.stderr)
            continue
        config.train.progress = False
        return config, step
    raise UserError(f"Workdir {workdir!r} holds no checkpoint with readable metadata ({root}/STEP/meta); "
                    "train into it first with `jaxnets train --config ... --workdir W`.")


def open_workdir(workdir: str):
    """(Trainer holding the newest readable checkpoint of `workdir`: dataset, task and state; its
    step). Read-only: no lock, nothing under checkpoints/ is created, renamed or saved; the step
    used is stated on stderr."""
    from jaxnets.runtime import auto_cpu_devices

    config, _ = read_workdir_config(workdir)
    try:   # the device layout training used (before JAX starts), so evals add up alike
        auto_cpu_devices([config.data.batch_size, config.data.eval_batch_size],
                         config.get("cpu_devices"), limit=config.get("mesh_devices", 0))
    except ValueError:
        pass
    from jaxnets.train import checkpoint as ckpt
    from jaxnets.train.trainer import Trainer

    with contextlib.redirect_stdout(sys.stderr):   # stdout carries the command's output only
        trainer = Trainer(config, workdir, read_only=True)
        checkpointer = ckpt.Checkpointer(workdir, config.train.keep_checkpoints, read_only=True)
        try:
            step = trainer.restore_latest(checkpointer)
        finally:
            checkpointer.close()
    print(f"Using checkpoint step {step} of {workdir}", file=sys.stderr, flush=True)
    return trainer, step


def _parser(prog: str, description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"jaxnets {prog}", description=description)
    parser.add_argument("--workdir", required=True, help="the --workdir of a `jaxnets train` run")
    return parser


def _parse(parser, argv):
    try:
        return parser.parse_args(argv)
    except SystemExit as e:   # argparse printed its usage line; keep its status (2 on errors)
        if e.code:
            raise UserError(f"bad arguments for `{parser.prog}` (see the usage line above).") from None
        raise


# ---------------------------------------------------------------------------- eval
def cmd_eval(argv: list[str]) -> int:
    parser = _parser("eval", "Evaluate the newest checkpoint; print and write the metrics.")
    parser.add_argument("--split", default=None, help="dataset split (default: data.eval_split)")
    args = _parse(parser, argv)
    trainer, step = open_workdir(args.workdir)
    split = args.split or trainer.config.data.eval_split
    if split not in trainer.dataset.splits:
        raise UserError(f"Dataset {trainer.config.data.name!r} has no split {split!r}; it has "
                        f"{sorted(trainer.dataset.splits)}.")
    import numpy as np

    metrics = {f"eval/{k}": float(v) if np.ndim(v) == 0 else np.asarray(v).tolist()
               for k, v in trainer.evaluate(split).items()}
    out = storage.join(args.workdir, f"eval_{split}.json")
    # Atomic (temporary file renamed over the target): a symlink planted there is replaced, not followed.
    storage.write_text(out, json.dumps({"step": step, "split": split, "metrics": metrics}, indent=1))
    print(f"Evaluated checkpoint step {step} on split {split!r}")
    for k, v in metrics.items():
        print(f"{k} = {v:.6g}" if isinstance(v, float) else f"{k} = {v}")
    print(f"Wrote {out}")
    return 0


# ---------------------------------------------------------------------------- sample
def cmd_sample(argv: list[str]) -> int:
    parser = _parser("sample", "Sample images from an AE, VAE, GAN or DDPM workdir into a PNG grid.")
    parser.add_argument("--num", type=int, default=100)
    parser.add_argument("--out", default=None, help="PNG path (default WORKDIR/cli_samples.png)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=None, help="DDPM: sampling steps (DDIM)")
    parser.add_argument("--guidance", type=float, default=None, help="DDPM: guidance scale")
    parser.add_argument("--label", type=int, default=None, help="DDPM (class): the digit to draw")
    parser.add_argument("--prompt", default=None, help="DDPM (text): the prompt")
    args = _parse(parser, argv)
    if not 1 <= args.num <= MAX_SAMPLES:
        raise UserError(f"--num must be between 1 and {MAX_SAMPLES} (one PNG grid, sampled in one "
                        f"batch), got {args.num}.")
    trainer, _ = open_workdir(args.workdir)
    images = sample_images(trainer, args)
    from jaxnets import images as imlib

    out = args.out or storage.join(args.workdir, "cli_samples.png")
    imlib.save_grid(images, out, min(10, len(images)), f"{len(images)} samples")
    print(f"Wrote {out} ({len(images)} images)")
    return 0


def sample_images(trainer, args):
    """[num, H, W, C] in [0, 1] from whatever generator the state holds."""
    import jax
    import numpy as np

    task, state, n = trainer.task, trainer.module(), args.num
    if hasattr(task, "sampler_fn"):                      # diffusion: the EMA denoiser
        return _sample_ddpm(task, state.ema, args)
    if hasattr(state, "generator"):                      # GAN
        return task.sample(state, n, args.seed)
    model = getattr(state, "model", None)
    if model is None or not hasattr(model, "decode"):
        raise UserError(f"Task {trainer.config.task!r} has no image generator to sample from "
                        "(`sample` takes AE, VAE, GAN and DDPM workdirs).")
    if args.label is not None or args.prompt is not None:
        raise UserError("--label and --prompt are for conditional DDPM workdirs.")
    rng = np.random.default_rng(args.seed)
    if hasattr(model, "mean_image"):   # VAE: decode the prior N(0, I) to E[x|z]
        z = rng.standard_normal((n, model.latent_dim))
        decode = jax.jit(model.mean_image)
    else:                              # AE: no prior; a Gaussian fitted to held-out codes
        from jaxnets.tasks.common import heldout_images

        x, _ = heldout_images(trainer.dataset, trainer.config.data.eval_split, 1000)
        codes = np.asarray(jax.jit(model.encode)(x), np.float64)
        z = rng.multivariate_normal(codes.mean(0), np.cov(codes, rowvar=False), n)
        decode = jax.jit(model.decode)
    return np.asarray(decode(z.astype(np.float32)))


def _sample_ddpm(task, model, args):
    import jax
    import numpy as np

    if args.steps is not None:
        task.sample_steps = args.steps
    sample = task.sampler_fn(model, args.num)
    key = jax.random.key(args.seed)
    if task.conditioning is None:
        if args.label is not None or args.prompt is not None:
            raise UserError("This DDPM is unconditional: drop --label/--prompt.")
        return sample(None, 0.0, key)
    guidance = task.guidance if args.guidance is None else args.guidance
    if task.conditioning == "class":
        if args.prompt is not None:
            raise UserError("This DDPM is conditioned on class labels: use --label D, not --prompt.")
        labels = np.full(args.num, args.label, np.int32) if args.label is not None \
            else np.arange(args.num) % 10
        return sample(task.conditions_for(model, labels), guidance, key)
    if args.label is not None:
        raise UserError("This DDPM is conditioned on text: use --prompt, not --label.")
    if args.prompt is None:
        labels = np.arange(args.num) % 10
        from jaxnets.tasks.diffusion import SEEN_PROMPT
        return sample(task.conditions_for(model, labels, SEEN_PROMPT), guidance, key)
    cond = np.repeat(task.tokenizer.encode(args.prompt), args.num, axis=0)
    return sample(cond, guidance, key)


# ---------------------------------------------------------------------------- text
def _encode_text(trainer, text: str):
    vocab = trainer.dataset.info.get("vocab")
    if not vocab:
        raise UserError(f"Dataset {trainer.config.data.name!r} has no character vocabulary to encode text with.")
    index = {c: i for i, c in enumerate(vocab)}
    unknown = sorted({c for c in text if c not in index})
    if unknown:
        raise UserError(f"Characters {''.join(unknown)!r} are not in the model's vocabulary.")
    return [index[c] for c in text]


def cmd_generate(argv: list[str]) -> int:
    parser = _parser("generate", "Continue a prompt with a language model (KV-cached where it has one).")
    parser.add_argument("--prompt", default="ROMEO:")
    parser.add_argument("--length", type=int, default=300)
    parser.add_argument("--temperature", type=float, default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = _parse(parser, argv)
    if not 1 <= args.length <= MAX_GENERATE:
        raise UserError(f"--length must be between 1 and {MAX_GENERATE} characters, got {args.length}.")
    trainer, _ = open_workdir(args.workdir)
    task = trainer.task
    if not hasattr(task, "sample_context"):
        raise UserError(f"Task {trainer.config.task!r} is not a language model; `generate` needs one.")
    prompt = _encode_text(trainer, args.prompt)
    if not prompt:
        raise UserError("--prompt must not be empty.")
    temperature = task.sample_temperature if args.temperature is None else args.temperature
    if temperature <= 0:
        raise UserError(f"--temperature must be positive, got {temperature}.")
    toks = task.sample(trainer.module().model, prompt, args.length, temperature, args.seed)
    print(args.prompt + "".join(task.vocab[int(i)] for i in toks))
    return 0


def cmd_translate(argv: list[str]) -> int:
    parser = _parser("translate", "Decode a source string with a seq2seq model (greedy or beam).")
    parser.add_argument("text", help="the source, in the dataset's characters")
    parser.add_argument("--beam", type=int, default=1, help="beam size (1: greedy)")
    args = _parse(parser, argv)
    if args.beam < 1:
        raise UserError(f"--beam must be at least 1, got {args.beam}.")
    trainer, _ = open_workdir(args.workdir)
    task = trainer.task
    if not hasattr(task, "source_key"):
        raise UserError(f"Task {trainer.config.task!r} is not sequence-to-sequence; `translate` needs one.")
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from jaxnets.tasks.seq2seq import decode

    split = trainer.dataset.splits[trainer.config.data.eval_split]
    width, length = split[task.source_key].shape[1], split[task.target_key].shape[1] - 1
    ids = _encode_text(trainer, args.text)
    if len(ids) > width:
        raise UserError(f"The source has {len(ids)} characters; this model reads at most {width}.")
    source = np.full((1, width), task.pad_id, np.int32)
    source[0, :len(ids)] = ids
    graphdef, params = nnx.split(trainer.module().model)
    run = jax.jit(lambda p, s: decode(nnx.merge(graphdef, p), s, length, bos_id=task.bos_id,
                                      eos_id=task.eos_id, beam_size=args.beam))
    print(task._text(np.asarray(run(params, jnp.asarray(source)))[0]))
    return 0


def cmd_export(argv: list[str]) -> int:
    from jaxnets.export import cmd_export as run   # imports JAX: only when asked for

    return run(argv)


COMMANDS = {"eval": cmd_eval, "sample": cmd_sample, "generate": cmd_generate,
            "translate": cmd_translate, "export": cmd_export}
