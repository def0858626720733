"""`jaxnets compile`: the trainer's own step compiled ahead of time for cpu:N and TPU targets.

The FLOP and collective counts of jaxnets.parallel.hlo are checked on programs whose counts
are known in closed form (a scan of matmuls; a psum per scanned layer); the compiled state
bytes per device against a real 8-device run of the same config.
"""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxnets import cli
from jaxnets.config import apply_overrides, load_config
from jaxnets.errors import UserError
from jaxnets.parallel import hlo
from jaxnets.parallel.compile import compile_with_text
from jaxnets.parallel.mesh import make_mesh
from jaxnets.parallel.targets import devices as target_devices, parse_target
from jaxnets.train.ahead_of_time import compile_for_target

EXPERIMENTS = os.path.join(os.path.dirname(os.path.dirname(__file__)), "experiments")


def test_hlo_counts_scanned_matmuls_and_collectives_per_trip():
    layers, batch, width = 5, 16, 32
    mesh = Mesh(np.asarray(jax.devices()[:4]), ("d",))

    def step(w, x):
        def body(h, wi):
            h = jnp.tanh(h @ wi)
            total = jax.shard_map(lambda a: jax.lax.psum(a, "d"), mesh=mesh, in_specs=P("d"),
                                  out_specs=P())(h)
            return h, total
        return jax.lax.scan(body, x, w)

    w = jax.ShapeDtypeStruct((layers, width, width), jnp.float32, sharding=NamedSharding(mesh, P()))
    x = jax.ShapeDtypeStruct((batch, width), jnp.float32, sharding=NamedSharding(mesh, P("d")))
    _, text = compile_with_text(jax.jit(step).lower(w, x))
    stats = hlo.HloStats(text)
    # Per device: a quarter of the batch, every layer: 2 * (B/4) * W * W.
    assert stats.matmul_flops() == 2 * (batch // 4) * width * width * layers
    reduce = stats.collectives()["all-reduce"]
    assert reduce["count"] == layers
    assert reduce["bytes"] == layers * (batch // 4) * width * 4


def test_targets_parse_and_refuse():
    assert parse_target("tpu:v5p-64").topology_name == "v5p:4x4x4"
    assert parse_target("tpu:v5e-8").topology_name == "v5e:2x4"
    assert parse_target("tpu:v6e-256").topology_name == "v6e:16x16"
    assert parse_target("cpu:8").count == 8
    for bad in ("tpu:v5p-6", "tpu:v5p-2", "gpu:8", "tpu:v7-8"):
        with pytest.raises(UserError):
            parse_target(bad)


def test_a_mesh_across_physical_axes_still_builds():
    # fsdp=8 x tensor=8 on v5p-64 (physical 4x4x4): no logical axis is a product of whole
    # physical axes, which jax.make_mesh refuses; the mesh then splits one physical axis.
    chips = target_devices(parse_target("tpu:v5p-64"))
    mesh = make_mesh({"data": 1, "fsdp": 8, "tensor": 8}, devices=chips)
    assert dict(mesh.shape) == {"data": 1, "fsdp": 8, "tensor": 8}
    assert sorted(d.id for d in mesh.devices.flat) == sorted(d.id for d in chips)
    # A layout that follows the topology still goes through jax.make_mesh's ordering.
    ordered = make_mesh({"data": 1, "fsdp": 16, "tensor": 4}, devices=chips)
    assert [d.id for d in ordered.devices.flat] == [
        d.id for d in jax.make_mesh((1, 16, 4), ("data", "fsdp", "tensor"), devices=chips).devices.flat]


def mnist_config():
    config = load_config(os.path.join(EXPERIMENTS, "mnist_cnn.py") + ":smoke")
    return apply_overrides(config, ["train.steps=2", "train.log_every=1", "train.eval_every=2",
                                    "train.checkpoint_every=2", "train.report=False",
                                    "train.progress=False", "mesh_devices=8"])


def test_cpu_target_state_bytes_match_a_real_run(tmp_path):
    from jaxnets.train.trainer import Trainer

    report = compile_for_target(mnist_config(), parse_target("cpu:8"))
    final = Trainer(mnist_config(), str(tmp_path)).run()
    assert report["devices"] == final["parallel"]["devices"] == 8
    assert report["state_bytes_per_device"] == final["parallel"]["state_bytes_per_device"]
    assert report["state_bytes"] == final["parallel"]["state_bytes"]
    b = report["bytes_per_device"]
    assert b["total"] == b["arguments"] + b["outputs"] - b["aliased"] + b["temporaries"] + b["code"]
    assert b["aliased"] > 0.9 * report["state_bytes_per_device"]   # the state is donated
    assert report["flops_per_step"] > 0 and report["mfu_upper_bound"] is None


def test_tpu_target_through_the_cli(capsys):
    lm = os.path.join(EXPERIMENTS, "transformer_shakespeare.py") + ":smoke"
    code = cli.main(["compile", "--config", lm, "--target", "tpu:v5p-8", "--json",
                     "--config.model.num_layers=1", "--config.model.d_model=64",
                     "--config.data.batch_size=16", "--config.mesh.fsdp=2"])
    assert code == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["device_kind"].startswith("TPU v5") and report["devices"] == 8
    assert report["mesh"] == {"data": 4, "fsdp": 2, "tensor": 1}
    assert report["fits"] is True and report["device_memory_bytes"] == 95 * 2**30
    assert set(report["collectives"]) == set(hlo.KINDS)
    assert sum(v["count"] for v in report["collectives"].values()) > 0   # gradients are reduced
    peak_s = report["flops_per_step"] / 8 / report["peak_flops_per_device"]
    assert report["step_time_lower_bound_s"] >= peak_s
    assert 0 < report["mfu_upper_bound"] <= 1


def test_a_step_the_compiler_refuses_for_hbm_is_a_fits_false_verdict():
    from jaxnets.parallel import compile as aot
    # The TPU compiler's own message (7B, data=8 on v5p-8), as jax raises it.
    message = ("RESOURCE_EXHAUSTED: E1000: CompileTimeHbmOom: Ran out of memory on HBM, the total "
               "memory required for HLO temporaries (161.87G) exceeds available HBM (95.73G). "
               "HLO module: jit_step.")
    assert aot.out_of_memory(message) and not aot.out_of_memory("INTERNAL: something else")
    found = aot._OOM.search(message)
    assert found.group(1) == "HLO temporaries"
    assert int(float(found.group(2)) * aot._UNITS[found.group(3)]) == int(161.87 * 2**30)
