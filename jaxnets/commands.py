"""Commands on a trained workdir: each reads the workdir's config and newest checkpoint.

    jaxnets eval --workdir W [--split test]
    jaxnets sample --workdir W --num 100 [--out samples.png] [--steps 40] [--guidance 4]
                   [--label 3 | --prompt "a handwritten three"] [--seed 0]
    jaxnets generate --workdir W --prompt "ROMEO:" --length 300 [--temperature 0.8] [--seed 0]
    jaxnets translate --workdir W "12+34" [--beam 4]
    jaxnets export --workdir W --out DIR

The model is rebuilt by the trainer itself (`Trainer(config, workdir)` + its restore), from
the config the checkpoint's metadata recorded, so a workdir is all these commands need.
Which commands fit which workdir is decided by the task's declared inference entry points
(`Task.entry_points`: sample, generate, translate, export; jaxnets/tasks/base.py), which the
commands call; they never look at the model. Bad input is one line and exit status 2.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys

import ml_collections
import numpy as np

from jaxnets import images as imlib
from jaxnets import storage
from jaxnets.errors import UserError
from jaxnets.export import export_inference
from jaxnets.platform.devices import auto_cpu_devices
from jaxnets.train import checkpoint as ckpt
from jaxnets.train.trainer import Trainer

MAX_SAMPLES = 2500      # sample: one 50 x 50 grid
MAX_GENERATE = 100_000  # generate: characters


# ---------------------------------------------------------------------------- the workdir
def read_workdir_config(workdir: str):
    """(config, step) of the newest checkpoint whose metadata parses, read as JSON (no JAX backend
    starts here). Nothing in the workdir is changed."""
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
    config, _ = read_workdir_config(workdir)
    try:   # the device layout training used (before JAX starts), so evals add up alike
        auto_cpu_devices([config.data.batch_size, config.data.eval_batch_size],
                         config.get("cpu_devices"), limit=config.get("mesh_devices", 0))
    except ValueError:
        pass
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
    parser = _parser("sample", "Sample images from a workdir whose task samples (AE, VAE, GAN, DDPM) into a PNG grid.")
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
    trainer.task.require("sample")
    conditions = {k: v for k, v in (("steps", args.steps), ("guidance", args.guidance),
                                    ("label", args.label), ("prompt", args.prompt)) if v is not None}
    images = trainer.task.sample(trainer.module(), args.num, args.seed, **conditions)
    out = args.out or storage.join(args.workdir, "cli_samples.png")
    imlib.save_grid(images, out, min(10, len(images)), f"{len(images)} samples")
    print(f"Wrote {out} ({len(images)} images)")
    return 0


# ---------------------------------------------------------------------------- text
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
    trainer.task.require("generate")
    print(args.prompt + trainer.task.generate(trainer.module(), args.prompt, args.length,
                                              args.temperature, args.seed))
    return 0


def cmd_translate(argv: list[str]) -> int:
    parser = _parser("translate", "Decode a source string with a seq2seq model (greedy or beam).")
    parser.add_argument("text", help="the source, in the dataset's characters")
    parser.add_argument("--beam", type=int, default=1, help="beam size (1: greedy)")
    args = _parse(parser, argv)
    if args.beam < 1:
        raise UserError(f"--beam must be at least 1, got {args.beam}.")
    trainer, _ = open_workdir(args.workdir)
    trainer.task.require("translate")
    print(trainer.task.translate(trainer.module(), args.text, args.beam))
    return 0


# ---------------------------------------------------------------------------- export
def cmd_export(argv: list[str]) -> int:
    parser = _parser("export", "Export parameters (orbax) and the inference function (jax.export).")
    parser.add_argument("--out", required=True, help="output directory")
    args = _parse(parser, argv)
    trainer, _ = open_workdir(args.workdir)
    trainer.task.require("export")
    signature = export_inference(trainer.task.inference_fn(trainer.module()), args.out)
    shapes = ", ".join(f"{i['name']} {i['shape']} {i['dtype']}" for i in signature["inputs"])
    print(f"Wrote {storage.join(args.out, signature['function'])} (inputs: {shapes}) and "
          f"{storage.join(args.out, 'params')}")
    return 0


COMMANDS = {"eval": cmd_eval, "sample": cmd_sample, "generate": cmd_generate,
            "translate": cmd_translate, "export": cmd_export}
