"""`jaxnets export --workdir W --out DIR`: a trained model for serving without jaxnets.

DIR/params                an orbax checkpoint of the inference parameters only (nnx.Param and
                          batch statistics; no optimizer state), a flat {"a.b.c": array} dict;
DIR/<model>.jax_export    the inference function serialized by `jax.export`, called as
                          f(params, *inputs) with a symbolic batch dimension;
DIR/signature.json        what the inputs are (names, shapes with "b" for the batch, dtypes).

Reload with JAX and orbax only:
    exported = jax.export.deserialize(open("DIR/cnn.jax_export", "rb").read())
    params = orbax.checkpoint.StandardCheckpointer().restore(os.path.abspath("DIR/params"))
    logits = exported.call(params, images)

What is exported is the task's inference entry point (`Task.inference_fn`, jaxnets/tasks/base.py):
a DDPM's EMA noise predictor eps(x_t, t[, condition]), a GAN's generator G(z), a VAE's or AE's
decoder (latent -> image), a seq2seq model's teacher-forced logits(source, target_in), a
classifier's or language model's model(x). Attention runs the portable "xla" formula and
recurrent layers the XLA loop in the artifact (the "auto" choices depend on the device, and
jaxnets' native CPU kernels are not there where the artifact is loaded).
"""
from __future__ import annotations

import dataclasses
import json
import os

import jax
import numpy as np
from jax import lax
import orbax.checkpoint as ocp
from flax import nnx

from jaxnets import storage
from jaxnets.nn.attention import MultiHeadAttention
from jaxnets.nn.layers import LayerNorm
from jaxnets.nn.lowering import Lowering
from jaxnets.nn.recurrent import RNN
from jaxnets.tasks.base import Inference


def _portable_layers(module) -> None:
    """Attention, recurrent, convolution and LayerNorm layers on their XLA paths, and no fusion barriers: no
    jaxnets FFI targets in the artifact (`jax.export` refuses custom calls without compatibility guarantees)."""
    for _, sub in nnx.iter_modules(module):
        if isinstance(sub, (MultiHeadAttention, RNN)):
            sub.implementation = "xla"
        elif isinstance(sub, nnx.Conv) and sub.conv_general_dilated is not lax.conv_general_dilated:
            sub.conv_general_dilated = lax.conv_general_dilated   # not jaxnets.nn.conv's hook
        if isinstance(sub, LayerNorm):
            sub.native_threads = None                           # XLA's LayerNorm
        if isinstance(getattr(sub, "lowering", None), Lowering) and sub.lowering.fusion_barriers:
            # CPU fusion barriers are a native call where a build exists (jaxnets.nn.conv.materialize)
            sub.lowering = dataclasses.replace(sub.lowering, fusion_barriers=False)


def export_inference(inference: Inference, out: str) -> dict:
    """Write DIR/params, DIR/<name>.jax_export and DIR/signature.json of a task's inference
    function (`task.inference_fn(state)`); return the signature."""
    name, module, fn, inputs = inference
    _portable_layers(module)
    graphdef, params, rest = nnx.split(module, (nnx.Param, nnx.BatchStat), ...)
    leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
    keys = [jax.tree_util.keystr(path, simple=True, separator=".").removesuffix(".value")
            for path, _ in leaves]
    flat = {k: np.asarray(v) for k, (_, v) in zip(keys, leaves)}

    def inference(flat_params, *xs):
        state = jax.tree.unflatten(treedef, [flat_params[k] for k in keys])
        return fn(nnx.merge(graphdef, state, rest), *xs)

    (batch,) = jax.export.symbolic_shape("b")
    spec = lambda a: jax.ShapeDtypeStruct((batch, *a.shape[1:]), a.dtype)
    param_spec = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in flat.items()}
    exported = jax.export.export(jax.jit(inference))(param_spec, *[spec(x) for _, x in inputs])
    os.makedirs(out, exist_ok=True)
    path = os.path.join(os.path.abspath(out), "params")
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(path, flat, force=True)
    checkpointer.wait_until_finished()
    # Atomic writes (temporary file renamed over the target): never half a file, and a symlink
    # at the target is replaced, not followed.
    storage.write_bytes(storage.join(out, f"{name}.jax_export"), bytes(exported.serialize()))
    signature = {"function": f"{name}.jax_export", "params": "params",
                 "inputs": [{"name": n, "shape": ["b", *x.shape[1:]], "dtype": str(x.dtype)}
                            for n, x in inputs],
                 "outputs": [{"shape": [str(d) for d in o.shape], "dtype": str(o.dtype)}
                             for o in exported.out_avals]}
    storage.write_text(storage.join(out, "signature.json"), json.dumps(signature, indent=1))
    return signature
