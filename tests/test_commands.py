"""Commands on a workdir, end to end: tiny runs are trained once, then each command reads the
workdir's recorded config and newest checkpoint (`jaxnets.commands`, `jaxnets.export`)."""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import tiny_config
from jaxnets.cli import main
from jaxnets.train.trainer import train

pytestmark = pytest.mark.slow


def _run(tmp_path_factory, name, config):
    workdir = str(tmp_path_factory.mktemp(name))
    config.train.report = False
    train(config, workdir)
    return workdir


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    return _run(tmp_path_factory, "cls", tiny_config(steps=3, model="mlp"))


@pytest.fixture(scope="module")
def language_model(tmp_path_factory):
    c = tiny_config(steps=2)
    c.task, c.data.name, c.data.options = "language_model", "shakespeare", {"seq_len": 32}
    c.data.eval_batch_size = 2048
    c.model = {"name": "transformer_lm", "d_model": 16, "num_heads": 2, "num_layers": 1, "dropout": 0.0}
    return _run(tmp_path_factory, "lm", c)


def _reload_in_plain_jax(out, fn_name, inputs_npz):
    """Run the exported function with JAX + orbax only (jaxnets must not even be importable)."""
    script = (
        "import os, sys, jax, numpy as np, orbax.checkpoint as ocp\n"
        f"exp = jax.export.deserialize(open(os.path.join({out!r}, {fn_name!r}), 'rb').read())\n"
        f"params = ocp.StandardCheckpointer().restore(os.path.abspath(os.path.join({out!r}, 'params')))\n"
        f"xs = np.load({inputs_npz!r})\n"
        "y = exp.call(params, *[xs[k] for k in sorted(xs.files)])\n"
        f"np.save(os.path.join({out!r}, 'y.npy'), np.asarray(y))\n"
        "assert 'jaxnets' not in sys.modules\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-I", "-c", script], cwd=out, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return np.load(os.path.join(out, "y.npy"))


def _export_and_compare(workdir, out, capsys, batch):
    from jaxnets.commands import open_workdir

    assert main(["export", "--workdir", workdir, "--out", out]) == 0
    signature = json.load(open(os.path.join(out, "signature.json")))
    assert signature["inputs"][0]["shape"][0] == "b"
    trainer, _ = open_workdir(workdir)
    _, module, fn, inputs = trainer.task.inference_fn(trainer.module())
    rng = np.random.default_rng(0)
    xs = [np.repeat(x, batch, 0) for _, x in inputs]
    if xs[0].dtype.kind == "f":
        xs[0] = rng.uniform(size=xs[0].shape).astype(xs[0].dtype)
    np.savez(os.path.join(out, "inputs.npz"), **{f"x{i}": x for i, x in enumerate(xs)})
    got = _reload_in_plain_jax(out, signature["function"], os.path.join(out, "inputs.npz"))
    want = np.asarray(fn(module, *[jnp.asarray(x) for x in xs]))
    assert got.shape == want.shape and got.shape[0] == batch
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    capsys.readouterr()


def test_eval_reproduces_final_json_and_export_round_trips(classifier, tmp_path, capsys):
    assert main(["eval", "--workdir", classifier]) == 0
    printed = capsys.readouterr().out
    final = json.load(open(os.path.join(classifier, "final.json")))["metrics"]
    written = json.load(open(os.path.join(classifier, "eval_test.json")))
    assert written["step"] == 3 and written["metrics"].keys() == final.keys()
    for k, v in final.items():
        np.testing.assert_allclose(written["metrics"][k], v, rtol=1e-6, atol=0)
        assert k in printed
    _export_and_compare(classifier, str(tmp_path / "export"), capsys, batch=5)


def test_generate_uses_the_models_sampler_and_the_lm_exports(language_model, tmp_path, capsys):
    from jaxnets.commands import open_workdir
    from jaxnets.tasks.language_model import sample_window

    assert main(["generate", "--workdir", language_model, "--prompt", "ROMEO:", "--length", "20",
                 "--temperature", "0.9", "--seed", "3"]) == 0
    text = capsys.readouterr().out.rstrip("\n")
    assert text.startswith("ROMEO:") and len(text) == 26
    # The command samples through the KV cache; the window sampler is the independent reference.
    trainer, _ = open_workdir(language_model)
    vocab = trainer.dataset.info["vocab"]
    toks = sample_window(trainer.module().model, [vocab.index(c) for c in "ROMEO:"], 20, 0.9, 32, seed=3)
    assert text[6:] == "".join(vocab[int(i)] for i in toks)
    _export_and_compare(language_model, str(tmp_path / "export"), capsys, batch=3)


def test_an_lstm_lm_exports_without_the_native_recurrence(tmp_path_factory, tmp_path, capsys):
    """On CPU the LSTM trains and evaluates through jaxnets' native kernel; the exported artifact
    runs the XLA loop (the plain-JAX process that reloads it has no jaxnets FFI targets) and
    gives the kernel's outputs."""
    c = tiny_config(steps=2)
    c.task, c.data.name, c.data.options = "language_model", "shakespeare", {"seq_len": 32}
    c.data.eval_batch_size = 2048
    c.model = {"name": "rnn_lm", "cell": "lstm", "embed_dim": 16, "hidden": 16}
    workdir = _run(tmp_path_factory, "rnn_lm", c)
    from jaxnets.commands import open_workdir

    trainer, _ = open_workdir(workdir)
    _, module, fn, inputs = trainer.task.inference_fn(trainer.module())
    lowered = jax.jit(fn).lower(module, *[jnp.asarray(x) for _, x in inputs]).as_text()
    assert "jaxnets_lstm_recurrence" in lowered
    _export_and_compare(workdir, str(tmp_path / "export"), capsys, batch=3)
    exported = jax.export.deserialize(open(tmp_path / "export" / "rnn_lm.jax_export", "rb").read())
    assert "jaxnets_" not in exported.mlir_module()


def test_a_resnet_exports_without_the_native_convolutions(tmp_path_factory, tmp_path, capsys):
    """On CPU a ResNet's 3x3 convolutions (stride 1 and 2) run in jaxnets' native kernels; the
    exported artifact runs XLA's convolutions and gives the kernels' outputs."""
    c = tiny_config(steps=1)
    c.data.options = {}
    c.model = {"name": "resnet", "depth": 8, "width": 16, "shortcut": "B"}
    workdir = _run(tmp_path_factory, "resnet", c)
    from jaxnets.commands import open_workdir

    trainer, _ = open_workdir(workdir)
    name, module, fn, inputs = trainer.task.inference_fn(trainer.module())
    # compiled: the kernel call appears once XLA partitions the program (custom_partitioning)
    compiled = jax.jit(fn).lower(module, *[jnp.asarray(x) for _, x in inputs]).compile().as_text()
    if "jaxnets_conv3x3_forward" not in compiled:
        pytest.skip("no native convolution build here")
    _export_and_compare(workdir, str(tmp_path / "export"), capsys, batch=3)
    exported = jax.export.deserialize(open(tmp_path / "export" / f"{name}.jax_export", "rb").read())
    assert "jaxnets_" not in exported.mlir_module()


def test_translate_greedy_and_beam(tmp_path_factory, capsys):
    c = tiny_config(steps=2)
    c.task, c.data.name, c.data.options = "seq2seq", "addition", {"num_train": 256, "num_test": 64}
    c.model = {"name": "seq2seq_lstm", "embed_dim": 8, "hidden": 16}
    workdir = _run(tmp_path_factory, "s2s", c)
    capsys.readouterr()
    from jaxnets.commands import open_workdir
    from jaxnets.tasks.seq2seq import decode

    trainer, _ = open_workdir(workdir)
    split = trainer.dataset.splits["test"]
    vocab, task = trainer.dataset.info["vocab"], trainer.task
    source = np.zeros((1, split["source"].shape[1]), np.int32)
    source[0, :5] = [vocab.index(ch) for ch in "12+34"]
    for beam in (1, 3):   # the command's output is the shared decoder's, as text
        want = task.detokenize(np.asarray(decode(trainer.module().model, jnp.asarray(source),
                                            split["target"].shape[1] - 1, bos_id=task.bos_id,
                                            eos_id=task.eos_id, beam_size=beam))[0])
        assert main(["translate", "--workdir", workdir, "12+34", "--beam", str(beam)]) == 0
        assert capsys.readouterr().out == want + "\n"
    assert main(["translate", "--workdir", workdir, "12*34"]) == 2
    assert "'*'" in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["ddpm", "vae"])
def test_sample_writes_a_png(kind, tmp_path_factory, capsys):
    import matplotlib.image

    c = tiny_config(steps=2)
    c.data.eval_split = ""            # sampling needs no held-out data: skip the eval compile
    if kind == "ddpm":
        c.task = "diffusion"
        c.model = {"name": "unet", "channels": 8, "channel_mults": (1, 2), "attention": False,
                   "conditioning": "class"}
        c.task_options = {"num_steps": 20, "sample_steps": 4}
        extra = ["--steps", "2", "--label", "3", "--guidance", "2"]
    else:
        c.task = "vae"
        c.model = {"name": "vae", "latent_dim": 2, "hidden": (16,)}
        extra = []
    workdir = _run(tmp_path_factory, kind, c)
    capsys.readouterr()
    out = str(tmp_path_factory.mktemp(kind + "_png") / "s.png")
    assert main(["sample", "--workdir", workdir, "--num", "6", "--out", out, *extra]) == 0
    assert "6 images" in capsys.readouterr().out
    assert matplotlib.image.imread(out).ndim == 3


def test_bad_workdirs_get_one_line_and_exit_2(tmp_path, classifier, capsys):
    # One message each; the CLI wraps it at 100 columns, so words are matched across lines.
    err = lambda: " ".join(capsys.readouterr().err.split())
    assert main(["eval", "--workdir", str(tmp_path / "missing")]) == 2
    message = err()
    assert message.startswith("error: Workdir") and "does not exist" in message \
        and "Traceback" not in message
    assert main(["sample", "--workdir", str(tmp_path), "--num", "2"]) == 2
    assert "holds no checkpoint" in err()
    assert main(["generate", "--workdir", classifier]) == 2
    assert "has no 'generate' entry point" in err()
