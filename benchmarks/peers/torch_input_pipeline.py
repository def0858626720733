"""PyTorch peer of benchmarks/speed/input_pipeline.py: DataLoader + ImageFolder-style dataset + PIL.

Run in the peers venv (`/tmp/peers/bin/python`, torch CPU + pillow + numpy; no torchvision, so
the ImageFolder scan and RandomResizedCrop are written out here the way torchvision does them:
sorted class folders, PIL open + convert("RGB"), crop then resize with bilinear filtering, flip).
Never imported by jaxnets. Last stdout line: {"benchmark", "device", "results": [...]}.
"""
import argparse
import json
import math
import os
import platform
import random
import time

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

EXTENSIONS = (".jpg", ".jpeg", ".png")


class ImageFolder(Dataset):
    def __init__(self, root, size):
        classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
        self.samples = [(os.path.join(root, c, f), i) for i, c in enumerate(classes)
                        for f in sorted(os.listdir(os.path.join(root, c))) if f.lower().endswith(EXTENSIONS)]
        self.size = size

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, index):
        path, label = self.samples[index]
        with open(path, "rb") as f:
            image = Image.open(f).convert("RGB")
        left, top, w, h = random_resized_crop_params(image.size[0], image.size[1])
        image = image.resize((self.size, self.size), Image.BILINEAR, box=(left, top, left + w, top + h))
        if random.random() < 0.5:
            image = image.transpose(Image.FLIP_LEFT_RIGHT)
        return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()), label


def random_resized_crop_params(width, height, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
    """torchvision.transforms.RandomResizedCrop.get_params."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * random.uniform(*scale)
        aspect = math.exp(random.uniform(*log_ratio))
        w, h = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return random.randint(0, width - w), random.randint(0, height - h), w, h
    w, h = min(width, height), min(width, height)
    return (width - w) // 2, (height - h) // 2, w, h


def images_per_s(root, size, workers, batch, images):
    loader = DataLoader(ImageFolder(root, size), batch_size=batch, shuffle=True, num_workers=workers,
                        drop_last=True, persistent_workers=False)
    it = iter(loader)
    next(it)   # workers started and warm
    n, t = 0, time.perf_counter()
    while n < images:
        x, _ = next(it)
        n += x.shape[0]
    return n / (time.perf_counter() - t)


def token_windows_per_s(path, seq_len, batch, batches):
    """nanoGPT's get_batch: random offsets into a uint16 memmap, stacked as int64 tensors."""
    data = np.memmap(path, dtype=np.uint16, mode="r")
    t = time.perf_counter()
    for _ in range(batches):
        ix = torch.randint(len(data) - seq_len - 1, (batch,))
        torch.stack([torch.from_numpy(data[i:i + seq_len + 1].astype(np.int64)) for i in ix.tolist()])
    return batches * batch / (time.perf_counter() - t)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", required=True, help="a folder of CLASS/*.jpg (the train split)")
    ap.add_argument("--workers", default="0,1,2")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--tokens", default="")
    ap.add_argument("--seq-len", type=int, default=1024)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    results = [{"name": f"decode_augment_{args.size}px_workers{w}",
                "images_per_s": images_per_s(args.root, args.size, int(w), args.batch, args.images)}
               for w in args.workers.split(",")]
    if args.tokens:
        results.append({"name": f"token_windows_seq{args.seq_len}",
                        "windows_per_s": token_windows_per_s(args.tokens, args.seq_len, 32, 200)})
    print(json.dumps({"benchmark": "torch_input_pipeline",
                      "device": f"cpu torch {torch.__version__} {platform.machine()}",
                      "results": results}))


if __name__ == "__main__":
    main()
