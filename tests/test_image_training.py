"""The trainer on an image folder with Grain worker processes: final.json's data figures,
resume after a stop equals an uninterrupted run whatever the worker count, bad files exit 2."""
import json
import os

import pytest

from jaxnets.data.fixtures import write_imagenet
from jaxnets.errors import UserError
from jaxnets.train.trainer import train
from helpers import tiny_config


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("images"))
    write_imagenet(out, images=40, classes=4)
    return out


def _config(root, steps, workers):
    c = tiny_config(steps=steps)
    c.data.name = "image_folder"
    c.data.options = {"root": root, "image_size": 16}
    c.data.eval_split = "val"
    c.data.batch_size = 8
    c.data.eval_batch_size = 8
    c.data.workers = workers
    c.train.checkpoint_every = 2
    return c


def test_resume_with_other_worker_counts_equals_one_run(folder, tmp_path):
    whole = train(_config(folder, 4, workers=1), str(tmp_path / "whole"))
    on_disk = json.load(open(tmp_path / "whole" / "final.json"))
    assert on_disk["data"] == {"examples_read": [32], "workers": 1, "source": "image_folder"}
    assert on_disk["host_rss_peak_bytes"] > 50 * 2**20
    # Stopped at step 2, resumed in-process with no workers: the same parameters at step 4.
    train(_config(folder, 2, workers=2), str(tmp_path / "split"))
    resumed = train(_config(folder, 4, workers=0), str(tmp_path / "split"))
    assert resumed["param_digest"] == whole["param_digest"]
    assert resumed["data"]["examples_read"] == [16]   # this process read only steps 2 and 3
    cm = on_disk["metrics"]["eval/confusion_matrix"]
    assert sum(map(sum, cm)) == 8   # every validation image evaluated exactly once


def test_corrupt_file_in_a_worker_is_a_user_error_naming_it(folder, tmp_path):
    bad_root = tmp_path / "bad"
    os.makedirs(bad_root / "train" / "a")
    os.makedirs(bad_root / "val" / "a")
    for split in ("train", "val"):
        (bad_root / split / "a" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    c = _config(str(bad_root), 2, workers=1)
    with pytest.raises(UserError, match="broken.jpg"):
        train(c, str(tmp_path / "w"))



def test_imagenet_recipe_is_the_standard_one():
    """experiments/resnet50_imagenet.py (its smoke runs end to end in the acceptance commands of
    docs/data.md; too heavy for the suite): ResNet-50 v1.5, Nesterov SGD at 0.1 per 256 images,
    warm-up + cosine, label smoothing 0.1, no decay on norms/biases, bf16, 1,024 global."""
    from jaxnets.config import load_config
    c = load_config("experiments/resnet50_imagenet.py")
    assert (c.model.name, c.model.form, c.model.depth) == ("resnet", "imagenet", 50)
    assert c.optim.name == "momentum" and c.optim.nesterov and c.optim.lr == 0.4
    assert c.optim.schedule == "warmup_cosine" and not c.optim.decay_all
    assert c.task_options.label_smoothing == 0.1 and c.data.batch_size == 1024
    assert c.train.compute_dtype == "bfloat16" and c.data.name == "image_folder"
    assert load_config("experiments/resnet50_imagenet.py:tfds").data.name == "imagenet2012"
