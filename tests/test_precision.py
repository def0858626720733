"""The mixed-precision policy: train.compute_dtype reaches the layers, train.param_dtype the
stored parameters, through the one helper every task builds its models with."""
import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from jaxnets.tasks.common import build_task_model
from jaxnets.train.defaults import base_config


def _float_param_dtypes(model):
    return {p.dtype for p in jax.tree.leaves(nnx.state(model, nnx.Param))}


def test_compute_and_param_dtype_policy():
    spec = ml_collections.ConfigDict({"name": "transformer_lm", "d_model": 16, "num_heads": 2,
                                      "num_layers": 1})
    c = base_config()
    model = build_task_model(spec, c, nnx.Rngs(0), vocab_size=11)
    assert _float_param_dtypes(model) == {jnp.dtype("float32")}
    assert model(jnp.zeros((1, 4), jnp.int32)).dtype == jnp.float32
    c.train.compute_dtype = "bfloat16"
    mixed = build_task_model(spec, c, nnx.Rngs(0), vocab_size=11)
    # bfloat16 compute, float32 storage: the same initial parameters as the float32 model.
    assert _float_param_dtypes(mixed) == {jnp.dtype("float32")}
    h = mixed.decoder.layers[0].self_attention.query(jnp.ones((1, 2, 16)))
    assert h.dtype == jnp.bfloat16
    c.train.param_dtype = "bfloat16"
    low = build_task_model(spec, c, nnx.Rngs(0), vocab_size=11)
    assert _float_param_dtypes(low) == {jnp.dtype("bfloat16")}
    ref = nnx.state(model, nnx.Param)
    got = nnx.state(low, nnx.Param)
    for a, b in zip(jax.tree.leaves(ref), jax.tree.leaves(got)):
        assert (a.astype(jnp.bfloat16) == b).all()
