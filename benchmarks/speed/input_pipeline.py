"""Input pipeline throughput: JPEG decode + augment at 224 px with 0, 1 and 2 Grain workers,
the decoder alone (the ceiling of one process), token windows; PyTorch's DataLoader beside it.

    python -m benchmarks.input_pipeline --json [--peer-python /tmp/peers/bin/python] [--save]

Images: a fixture folder in ImageNet's layout (`jaxnets.data.fixtures`, real JPEGs of 300-500 px
a side, about ImageNet's sizes), written once under $TMPDIR. jaxnets rows: `TrainIterator`
over the image folder with the recipe's host transform (Inception random-resized crop to 224,
flip), batches of 32, images/s measured after the first batch (worker start-up excluded, as
for the peer). `decoder_alone`: jaxnets' decoder (libjpeg-turbo through simplejpeg) decoding
whole files to RGB in this process, no crop; `decoder_alone_pillow`: the same with Pillow, the
peer's decoder.
Tokens: windows of 1,025 tokens from a memory-mapped uint16 file, batches of 32 (the peer:
nanoGPT's get_batch). The peer (`benchmarks/peers/torch_input_pipeline.py`) runs the same
images and worker counts with torch's DataLoader in its own venv, rounds alternating with
jaxnets' (medians over `--repeats`); each row reports `ratio_jaxnets_over_peer` (> 1: jaxnets
is faster). `--save` writes
benchmarks/results/input_pipeline.json, shown by `python -m benchmarks.report`.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
from PIL import Image

from benchmarks.common import report, save
from jaxnets.data.fixtures import write_imagenet, write_tokens
from jaxnets.data.image_decode import TrainImageTransform, decode_rgb
from jaxnets.data.image_folder import ImageFolderSource
from jaxnets.data.pipeline import TrainIterator
from jaxnets.data.token_file import token_file

PEER = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "peers",
                    "torch_input_pipeline.py")


def fixture(folder: str, images: int) -> str:
    root = os.path.join(folder, f"imagenet_{images}")
    if not os.path.isdir(os.path.join(root, "train")):
        write_imagenet(root, images=images, classes=8, sides=(300, 500))
    return root


def images_per_s(root: str, workers: int, batch: int, images: int, size: int) -> float:
    it = TrainIterator(ImageFolderSource(root, "train"), batch, seed=0,
                       transform=TrainImageTransform(size), workers=workers, prefetch=2)
    try:
        next(it)   # workers started and warm
        n, t = 0, time.perf_counter()
        while n < images:
            n += len(next(it)["label"])
        return n / (time.perf_counter() - t)
    finally:
        it.close()


def decoder_alone(root: str, images: int, decode=decode_rgb) -> float:
    source = ImageFolderSource(root, "train")
    records = [source[i % len(source)] for i in range(images)]   # file reads outside the timing
    t = time.perf_counter()
    for r in records:
        decode(r["image"].tobytes(), str(r["path"]))
    return images / (time.perf_counter() - t)


def pillow_decode(data: bytes, path: str):
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def token_windows_per_s(path: str, seq_len: int, batch: int, batches: int) -> float:
    it = TrainIterator(token_file(path, seq_len=seq_len, test_windows=0).splits["train"], batch,
                       seed=0, prefetch=0)
    next(it)
    t = time.perf_counter()
    for _ in range(batches):
        next(it)
    return batches * batch / (time.perf_counter() - t)


def peer(python: str, root: str, tokens: str, args) -> dict:
    if not python or not os.path.exists(python):
        return {}
    out = subprocess.run([python, PEER, "--root", os.path.join(root, "train"), "--workers",
                          args.workers, "--batch", str(args.batch), "--images", str(args.images),
                          "--size", str(args.size), "--tokens", tokens, "--seq-len",
                          str(args.seq_len), "--json"], capture_output=True, text=True, timeout=900)
    if out.returncode:
        print(f"peer failed: {out.stderr[-2000:]}", file=sys.stderr)
        return {}
    line = json.loads(out.stdout.strip().splitlines()[-1])
    return {"device": line["device"], **{r["name"]: r for r in line["results"]}}


def measure(root: str, tokens: str, args) -> list[dict]:
    rows = [{"name": "decoder_alone", "images_per_s": decoder_alone(root, args.images)},
            {"name": "decoder_alone_pillow",
             "images_per_s": decoder_alone(root, args.images, pillow_decode)}]
    for w in (int(x) for x in args.workers.split(",")):
        rows.append({"name": f"decode_augment_{args.size}px_workers{w}", "workers": w,
                     "images_per_s": images_per_s(root, w, args.batch, args.images, args.size)})
    rows.append({"name": f"token_windows_seq{args.seq_len}",
                 "windows_per_s": token_windows_per_s(tokens, args.seq_len, 32, 200)})
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", action="store_true", help="(the JSON line is always printed last)")
    ap.add_argument("--peer-python", default="/tmp/peers/bin/python",
                    help="python of the PyTorch venv; '' skips the peer")
    ap.add_argument("--workers", default="0,1,2")
    ap.add_argument("--images", type=int, default=256, help="images timed per row")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--repeats", type=int, default=2, help="rounds of peer + jaxnets (medians)")
    ap.add_argument("--seq-len", type=int, default=1024)
    ap.add_argument("--dir", default=os.path.join(tempfile.gettempdir(), "jaxnets_input_pipeline"))
    ap.add_argument("--save", action="store_true", help="write benchmarks/results/input_pipeline.json")
    args = ap.parse_args(argv)
    os.makedirs(args.dir, exist_ok=True)
    root = fixture(args.dir, 400)
    tokens = os.path.join(args.dir, "tokens.bin")
    if not os.path.exists(tokens):
        write_tokens(tokens, 20_000_000)
    # Rounds alternate peer and jaxnets, medians per row: a shared machine's load drifts.
    rounds, peer_rounds = [], []
    for _ in range(args.repeats):
        peer_rounds.append(peer(args.peer_python, root, tokens, args))
        rounds.append(measure(root, tokens, args))
    theirs = {k: v for k, v in peer_rounds[0].items() if k == "device"}
    results = []
    for i, row in enumerate(rounds[0]):
        row = {k: (statistics.median(r[i][k] for r in rounds) if k.endswith("_per_s") else v)
               for k, v in row.items()}
        metric = "images_per_s" if "images_per_s" in row else "windows_per_s"
        peers = [p[row["name"]][metric] for p in peer_rounds if row["name"] in p]
        if peers:
            row[f"peer_{metric}"] = statistics.median(peers)
            row["ratio_jaxnets_over_peer"] = row[metric] / row[f"peer_{metric}"]
        if row["name"].startswith("decode_augment"):
            row["fraction_of_decoder_alone"] = row["images_per_s"] / results[0]["images_per_s"]
        results.append(row)
    results[0]["repeats"] = args.repeats
    command = "python -m benchmarks.input_pipeline " + " ".join(argv if argv is not None else sys.argv[1:])
    line = report("input_pipeline", results, command=command, peer=theirs.get("device", "none"))
    if args.save:
        save(line, "input_pipeline.json")


if __name__ == "__main__":
    main()
