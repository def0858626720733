"""Scale-out on 8 forced CPU devices: logical axes on every parameter, the same numbers on every
mesh layout, FSDP really divides the state, and attention kernels run per shard."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxnets.data.pipeline import TrainIterator
from jaxnets.parallel import sharding
from jaxnets.nn.attention import dot_product_attention, reference_attention_numpy
from jaxnets.parallel import mesh as meshlib
from jaxnets.train.trainer import Trainer
from helpers import tiny_config

# One small instance of every model family (keywords beyond the registry defaults).
FAMILIES = {
    "mlp": dict(in_features=(8, 8, 1), num_classes=10),
    "cnn": dict(in_channels=1, num_classes=10, input_size=8, features=(8, 16), hidden=16),
    "resnet": dict(depth=8, in_channels=1),
    "plainnet": dict(depth=8, in_channels=1),
    "preact_resnet": dict(depth=8, in_channels=1),
    "densenet": dict(depth=10, growth_rate=4, in_channels=1),
    "autoencoder": dict(latent_dim=4),
    "vae": dict(latent_dim=4),
    "dcgan_generator": dict(latent_dim=8, channels=8),
    "dcgan_discriminator": dict(channels=8),
    "unet": dict(channels=8, channel_mults=(1, 2), conditioning="text"),
    "rnn_lm": dict(vocab_size=11, hidden=8, embed_dim=8),
    "rnn_classifier": dict(num_classes=3, vocab_size=11, hidden=8, embed_dim=8, cell="gru"),
    "rnn_tagger": dict(num_classes=3, vocab_size=11, hidden=8, embed_dim=8, cell="rnn"),
    "seq2seq_lstm": dict(vocab_size=11, hidden=8, embed_dim=8),
    "transformer": dict(vocab_size=11, d_model=16, num_heads=2, num_layers=1, tie_output=False),
    "transformer_lm": dict(vocab_size=11, d_model=16, num_heads=2, num_layers=2, scan_layers=True,
                           positions="learned", tie_output=False),
}


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_every_parameter_names_its_axes(name):
    from jaxnets.models import MODELS
    # Abstract (no arrays): metadata is all we read. Builds without any mesh.
    model = nnx.eval_shape(lambda: MODELS.get(name)(**FAMILIES[name], rngs=nnx.Rngs(0)))
    unnamed = []
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        names = var.get_metadata().get("out_sharding")
        if var.ndim and (not names or len(names) != var.ndim):
            unnamed.append(("/".join(map(str, path)), var.shape, names))
    assert not unnamed, unnamed


def test_rules_resolve_with_divisibility_fallback():
    mesh = jax.make_mesh((2, 2, 2), ("data", "fsdp", "tensor"),
                         axis_types=(jax.sharding.AxisType.Auto,) * 3)
    rules = sharding.DEFAULT_RULES
    assert sharding.resolve(("embed", "heads"), (64, 32), mesh, rules)[0] == P("fsdp", "tensor")
    spec, notes = sharding.resolve(("vocab", "embed"), (11, 16), mesh, rules)
    assert spec == P(None, "fsdp") and "11" in notes[0]          # 11 rows: not split, said so
    assert sharding.resolve(("batch", None), (8, 3), mesh, rules)[0] == P(("data", "fsdp"))
    # one mesh axis never splits two dimensions of one array
    spec, notes = sharding.resolve(("embed", "embed"), (4, 4), mesh, rules)
    assert spec == P("fsdp") and notes


def _lm_config():
    c = tiny_config(steps=3)
    c.task = "language_model"
    c.data.name = "shakespeare"
    c.data.options = {"seq_len": 32}
    c.data.batch_size = 16
    c.data.eval_batch_size = 16
    c.model = {"name": "transformer_lm", "d_model": 32, "num_heads": 4, "num_layers": 2,
               "dropout": 0.1, "max_len": 32, "tie_output": True}
    c.train.report = False
    return c


def _resnet_config():
    c = tiny_config(steps=3)
    c.model = {"name": "resnet", "depth": 8, "width": 8}
    c.data.batch_size = 16
    c.data.eval_batch_size = 16
    c.train.report = False
    return c


LAYOUTS = [({"data": 1}, 1), ({"data": 8}, 0), ({"fsdp": 8}, 0), ({"data": 2, "fsdp": 2, "tensor": 2}, 0)]


@pytest.mark.parametrize("make_config", [_lm_config, _resnet_config], ids=["transformer_lm", "resnet"])
def test_same_losses_on_every_layout(tmp_path, make_config):
    """Three steps (dropout on for the LM) on four layouts. Tolerance: float32 sums in another
    order (sharded matmuls and gradient reductions), ~1e-6 relative per step; 1e-5 allows for
    three steps of Adam amplifying it."""
    losses, per_device = {}, {}
    for axes, devices in LAYOUTS:
        c = make_config()
        c.mesh = {"data": 1, "fsdp": 1, "tensor": 1, **axes}
        c.mesh_devices = devices
        trainer = Trainer(c, str(tmp_path / "_".join(f"{k}{v}" for k, v in axes.items())))
        it = TrainIterator(trainer.dataset.splits["train"], c.data.batch_size, c.seed)
        key = tuple(sorted(axes.items()))
        losses[key] = [float(trainer.step(next(it), i)["loss"]) for i in range(3)]
        summary = trainer.parallel_summary()
        assert summary["devices"] == (devices or 8)
        per_device[key] = (summary["state_bytes_per_device"], summary["state_bytes"])
    reference = losses[(("data", 1),)]
    for key, values in losses.items():
        np.testing.assert_allclose(values, reference, rtol=1e-5, err_msg=str(key))
    fsdp_bytes, total = per_device[(("fsdp", 8),)]
    assert fsdp_bytes <= total / 6, (fsdp_bytes, total)
    assert per_device[(("data", 8),)][0] == total          # data parallel: replicated


def test_mesh_shape_errors():
    from jaxnets.errors import UserError
    assert meshlib.mesh_shape({"tensor": 2, "data": -1, "fsdp": 1}, 8) == {"data": 4, "fsdp": 1, "tensor": 2}
    with pytest.raises(UserError, match="does not divide"):
        meshlib.mesh_shape({"data": -1, "tensor": 3}, 8)
    with pytest.raises(UserError, match="needs 4 devices"):
        meshlib.mesh_shape({"data": 2, "fsdp": 2}, 8)


def _attention_inputs(b=8, t=32, h=4, hkv=2, d=16):
    keys = jax.random.split(jax.random.key(0), 3)
    q = jax.random.normal(keys[0], (b, t, h, d), jnp.float32)
    k = jax.random.normal(keys[1], (b, t, hkv, d), jnp.float32)
    v = jax.random.normal(keys[2], (b, t, hkv, d), jnp.float32)
    lengths = jnp.array([t, t - 3, t - 9, 5, t, 1, t - 1, 17], jnp.int32)[:b]
    return q, k, v, lengths


@pytest.mark.parametrize("context", ["trainer", "set_mesh"])
@pytest.mark.parametrize("implementation", ["pallas", "blockwise"])
def test_attention_kernels_run_per_shard(implementation, context):
    """Batch over data x fsdp, heads over tensor: the compiled program moves no q/k/v between
    devices (no all-gather, all-to-all or collective-permute), and matches float64 NumPy.
    context "trainer": the trainer's `axis_rules` (mesh and rules) held while tracing;
    "set_mesh": research code that only sets `jax.set_mesh(mesh)` around its own jit."""
    mesh = jax.make_mesh((2, 2, 2), ("data", "fsdp", "tensor"),
                         axis_types=(jax.sharding.AxisType.Auto,) * 3)
    q, k, v, lengths = _attention_inputs()
    heads = NamedSharding(mesh, P(("data", "fsdp"), None, "tensor", None))
    q, k, v = (jax.device_put(x, heads) for x in (q, k, v))
    lengths = jax.device_put(lengths, NamedSharding(mesh, P(("data", "fsdp"))))

    def f(q, k, v, lengths):
        return dot_product_attention(q, k, v, causal=True, kv_lengths=lengths,
                                     implementation=implementation)

    if context == "trainer":
        def traced(q, k, v, lengths):
            with sharding.axis_rules(mesh, sharding.DEFAULT_RULES):
                return f(q, k, v, lengths)
        compiled = jax.jit(traced).lower(q, k, v, lengths).compile()
    else:
        with jax.set_mesh(mesh):
            compiled = jax.jit(f).lower(q, k, v, lengths).compile()
    hlo = compiled.as_text()
    for op in ("all-gather", "all-to-all", "collective-permute", "all-reduce"):
        assert op not in hlo, op
    out = compiled(q, k, v, lengths)
    assert out.sharding.is_equivalent_to(heads, 4)
    want = reference_attention_numpy(q, k, v, causal=True, kv_lengths=lengths)
    # float32 online softmax vs float64: error ~ 1e-6 x |v| sums over 32 keys
    np.testing.assert_allclose(np.asarray(out), want, atol=2e-5, rtol=1e-5)


def test_tpu_kernel_in_interpret_mode_matches_reference():
    """The Pallas TPU flash kernel (what `auto` picks on TPU), run in TPU interpret mode on CPU."""
    keys = jax.random.split(jax.random.key(1), 3)
    q = jax.random.normal(keys[0], (1, 128, 2, 64), jnp.float32)
    k = jax.random.normal(keys[1], (1, 128, 1, 64), jnp.float32)
    v = jax.random.normal(keys[2], (1, 128, 1, 64), jnp.float32)
    segments = jnp.concatenate([jnp.zeros((1, 100), jnp.int32), jnp.ones((1, 28), jnp.int32)], 1)
    out = dot_product_attention(q, k, v, causal=True, segment_ids=segments,
                                implementation="pallas_tpu")
    want = reference_attention_numpy(q, k, v, causal=True, segment_ids=segments)
    np.testing.assert_allclose(np.asarray(out), want, atol=2e-5, rtol=1e-5)


def test_print_layout_shows_every_array(tmp_path):
    from helpers import run_cli
    out = run_cli("train", "--config", "experiments/transformer_shakespeare.py:smoke", "--print_layout",
                  "--config.mesh.fsdp=2", "--config.mesh.tensor=2", "--config.model.num_layers=1",
                  env_extra={"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}, timeout=300)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "mesh {'data': 2, 'fsdp': 2, 'tensor': 2}" in text
    line = next(l for l in text.splitlines() if l.startswith("model/decoder/layers/0/ff_in/kernel"))
    assert "(embed, mlp)" in line and "P('fsdp', 'tensor')" in line
    # the 80-character vocabulary splits over tensor=2; Adam's moments follow their parameter
    assert any(l.startswith("opt/") and "ff_in/kernel" in l and "P('fsdp', 'tensor')" in l
               for l in text.splitlines())
    assert "MiB per device" in text.splitlines()[-1]


def test_input_feed_rule_names_the_axis_that_spans_processes():
    """Each process reads its own share of every batch: an axis outside the batch rule may not
    span processes (its devices would need the same rows from two readers)."""
    names, batch = ("data", "fsdp", "tensor"), ("data", "fsdp")
    two_hosts = np.array([0, 0, 1, 1]).reshape(2, 1, 2)        # data=2 (across hosts), tensor=2 within
    assert meshlib.input_feed_problem(two_hosts, names, batch) == ""
    tensor_across = np.array([0, 1, 0, 1]).reshape(2, 1, 2)    # tensor=2 spans the hosts
    assert "tensor spans processes" in meshlib.input_feed_problem(tensor_across, names, batch)
    # fsdp outside the batch rule (rules that do not split the batch over it), spanning hosts
    fsdp_across = np.array([0, 1]).reshape(1, 2, 1)
    assert "fsdp spans processes" in meshlib.input_feed_problem(fsdp_across, names, ("data",))
    assert meshlib.input_feed_problem(fsdp_across, names, batch) == ""   # fsdp splits the batch
    uneven = np.array([0, 0, 1]).reshape(3, 1, 1)
    assert "unequal shares" in meshlib.input_feed_problem(uneven, names, batch)
