"""ArrayRecord files given directly: records written, read back by index, in workers, encoded."""
import io

import numpy as np
import pytest
from PIL import Image

from jaxnets.data import load_dataset
from jaxnets.data.array_record_files import write_array_record
from jaxnets.data.pipeline import TrainIterator, eval_batches
from jaxnets.errors import UserError


def test_records_round_trip_and_feed_the_pipeline(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (11, 4, 5, 3), dtype=np.uint8)
    for part, rows in (("a", range(0, 6)), ("b", range(6, 11))):
        write_array_record(tmp_path / f"train-{part}.array_record",
                           ({"image": images[i], "label": np.int32(i)} for i in rows))
    ds = load_dataset("array_record", files={"train": str(tmp_path / "train-*.array_record")},
                      num_classes=11)
    train = ds.splits["train"]
    assert len(train) == 11 and ds.info["image_shape"] == (4, 5, 3)
    for i in (0, 5, 6, 10):   # files in sorted order, records in written order
        np.testing.assert_array_equal(train[i]["image"], images[i])
    batch = TrainIterator(train, batch_size=4, seed=0).batch(2)
    np.testing.assert_array_equal(batch["image"], images[batch["label"]])
    got = list(eval_batches(train, 11, workers=1))[0]   # the source pickled into a worker
    np.testing.assert_array_equal(got["image"], images)


def test_encoded_images_and_missing_files(tmp_path):
    png = io.BytesIO()
    Image.new("RGB", (30, 20), (200, 10, 10)).save(png, format="PNG")
    write_array_record(tmp_path / "e.array_record",
                       [{"image": np.frombuffer(png.getvalue(), np.uint8), "label": np.int32(0)}])
    ds = load_dataset("array_record", files={"train": str(tmp_path / "e.array_record")},
                      image_size=8, num_classes=1)
    out = ds.train_transform(ds.splits["train"][0], np.random.default_rng(0))
    assert out["image"].shape == (8, 8, 3) and tuple(out["image"][4, 4]) == (200, 10, 10)
    with pytest.raises(UserError, match="nothing-here"):
        load_dataset("array_record", files={"train": str(tmp_path / "nothing-here*")})
