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

What is exported is the model's inference entry point, chosen by capability: a DDPM's EMA
noise predictor eps(x_t, t[, condition]), a GAN's generator G(z), a VAE's or AE's decoder
(latent -> image), a seq2seq model's teacher-forced logits(source, target_in), and
otherwise model(x) on the dataset's inputs (classifiers, language models). Attention runs
the portable "xla" formula in the artifact (the "auto" choice depends on the device).
"""
from __future__ import annotations

import json
import os

import jax
import numpy as np
from flax import nnx

from jaxnets import storage
from jaxnets.errors import UserError


def inference_target(trainer):
    """(name, module, fn(module, *inputs), [(input name, example array)]) for this workdir."""
    task, state = trainer.task, trainer.module()
    split = trainer.dataset.splits[trainer.config.data.eval_split]
    if hasattr(task, "sampler_fn"):                                    # diffusion
        x = np.zeros((1, *trainer.dataset.info["image_shape"]), np.float32)
        inputs = [("x_t", x), ("t", np.zeros((1,), np.int32))]
        if task.conditioning is not None:
            cond = np.asarray(task.conditions_for(state.ema, np.zeros(1, np.int32), "{word}"))
            inputs.append(("condition", cond))
            return "unet", state.ema, lambda m, x, t, c: m(x, t, c), inputs
        return "unet", state.ema, lambda m, x, t: m(x, t), inputs
    if hasattr(state, "generator"):                                    # GAN
        z = np.zeros((1, state.generator.latent_dim), np.float32)
        return "generator", state.generator, lambda g, z: g(z), [("z", z)]
    model = state.model
    name = trainer.config.model.name
    if hasattr(model, "decode") and hasattr(model, "latent_dim"):      # AE / VAE decoder
        z = np.zeros((1, model.latent_dim), np.float32)
        fn = (lambda m, z: m.mean_image(z)) if hasattr(model, "mean_image") else (lambda m, z: m.decode(z))
        return name + "_decoder", model, fn, [("z", z)]
    if hasattr(task, "source_key"):                                    # seq2seq
        src, tgt = split[task.source_key][:1], split[task.target_key][:1, :-1]
        return name, model, lambda m, s, t: m(s, t), [("source", src), ("target_in", tgt)]
    key = getattr(task, "input_key", None) or getattr(task, "tokens_key", None)
    if key is None or key not in split:
        raise UserError(f"`export` does not know the inputs of task {trainer.config.task!r}.")
    x = np.asarray(split[key][:1])
    if hasattr(task, "tokens_key") and not hasattr(task, "labels_key"):
        x = x[:, :-1]                                                  # LM: inputs of the targets
    if x.dtype == np.uint8:
        x = x.astype(np.float32) / 255.0
    return name, model, lambda m, x: m(x), [(key, x)]


def _portable_attention(module) -> None:
    from jaxnets.nn.attention import MultiHeadAttention

    for _, sub in module.iter_modules():
        if isinstance(sub, MultiHeadAttention):
            sub.implementation = "xla"


def export_workdir(trainer, out: str) -> dict:
    """Write DIR/params, DIR/<name>.jax_export and DIR/signature.json; return the signature."""
    import orbax.checkpoint as ocp

    name, module, fn, inputs = inference_target(trainer)
    _portable_attention(module)
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


def cmd_export(argv: list[str]) -> int:
    from jaxnets.commands import _parse, _parser, open_workdir

    parser = _parser("export", "Export parameters (orbax) and the inference function (jax.export).")
    parser.add_argument("--out", required=True, help="output directory")
    args = _parse(parser, argv)
    trainer, _ = open_workdir(args.workdir)
    signature = export_workdir(trainer, args.out)
    shapes = ", ".join(f"{i['name']} {i['shape']} {i['dtype']}" for i in signature["inputs"])
    print(f"Wrote {os.path.join(args.out, signature['function'])} (inputs: {shapes}) and "
          f"{os.path.join(args.out, 'params')}")
    return 0

