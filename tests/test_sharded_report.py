"""Nothing gathered whole at the end of a run: with fsdp=8 on 8 forced devices the report gets
the sharded state (checked by the arrays' shardings), and the parameter digest, reduced on the
devices, equals the digest of the same parameters on one device (a host copy, and a 1-device
trainer restoring the run's checkpoint). Training itself on 1 vs 8 devices adds in other
orders, so its parameters differ in the last bits: digests are compared on equal parameters."""
import os

import jax
import numpy as np
from flax import nnx

from jaxnets.config import apply_overrides, load_config
from jaxnets.tasks.language_model import LanguageModelTask
from jaxnets.train import checkpoint as ckpt
from jaxnets.train.trainer import Trainer

EXPERIMENT = os.path.join(os.path.dirname(os.path.dirname(__file__)), "experiments",
                          "transformer_shakespeare.py")


def config(*extra):
    return apply_overrides(load_config(EXPERIMENT + ":smoke"), [
        "model.d_model=64", "model.num_layers=1", "data.batch_size=16", "data.eval_batch_size=64",
        "data.options.seq_len=32", "train.steps=3", "train.log_every=3", "train.eval_every=3",
        "train.checkpoint_every=3", "train.progress=False", "task_options.sample_length=8",
        *extra])


def test_fsdp_report_gets_shards_and_digest_is_topology_free(tmp_path, monkeypatch):
    seen = {}
    original = LanguageModelTask.report

    def recording_report(self, state, workdir):
        seen["params"] = nnx.to_pure_dict(nnx.state(state, nnx.Param))
        return original(self, state, workdir)

    monkeypatch.setattr(LanguageModelTask, "report", recording_report)
    trainer = Trainer(config("mesh.data=1", "mesh.fsdp=8"), str(tmp_path / "fsdp"))
    final = trainer.run()
    assert os.path.isfile(tmp_path / "fsdp" / "samples.txt")

    sharded = 0
    for path, x in ckpt._leaf_items(seen["params"]):
        assert isinstance(x, jax.Array) and len(x.sharding.device_set) == 8, path
        if x.size >= 8 * 64:   # every large parameter: each device holds 1/8 of it
            assert not x.sharding.is_fully_replicated, path
            assert max(s.data.size for s in x.addressable_shards) == x.size // 8, path
            sharded += 1
    assert sharded >= 4

    # The same parameters on one device (a host copy put on device 0) give the same digest.
    one_device = jax.tree.map(lambda x: jax.device_put(np.asarray(x), jax.devices()[0]),
                              nnx.to_pure_dict(nnx.state(trainer.module(), nnx.Param)))
    assert ckpt.param_digest(one_device) == final["param_digest"]
    # A 1-device trainer restoring the fsdp=8 run's checkpoint reports the same digest.
    single = Trainer(config("mesh_devices=1"), str(tmp_path / "fsdp"))
    checkpointer = ckpt.Checkpointer(str(tmp_path / "fsdp"), 3)
    try:
        assert single.restore_latest(checkpointer) == 3
    finally:
        checkpointer.close()
    assert single.mesh.size == 1 and single.param_digest() == final["param_digest"]
    # A changed sign of one element changes it.
    leaves, tree = jax.tree.flatten(one_device)
    leaves[0] = leaves[0].at[(0,) * leaves[0].ndim].multiply(-1.0)
    assert ckpt.param_digest(jax.tree.unflatten(tree, leaves)) != final["param_digest"]
