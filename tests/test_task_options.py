"""Options declared once: tasks (`options`), models (constructor keywords) and datasets (loader
keywords) declare their options with defaults; `jaxnets.options.resolve` loads an experiment,
accepts overrides of declared keys the experiment did not set, and refuses undeclared ones."""
import glob
import os

import pytest

from helpers import REPO
from jaxnets import options
from jaxnets.cli import main
from jaxnets.config import apply_overrides, load_config
from jaxnets.errors import UserError
from jaxnets.tasks import TASKS
from jaxnets.tasks.base import resolve_options
from jaxnets.train.defaults import base_config

EXPERIMENTS = sorted(glob.glob(os.path.join(REPO, "experiments", "*.py")))
VAE = os.path.join(REPO, "experiments", "vae_mnist.py")
LM = os.path.join(REPO, "experiments", "transformer_shakespeare.py")


def test_every_task_declares_its_options():
    for name in TASKS.names():
        assert isinstance(getattr(TASKS.get(name), "options", None), dict), name


@pytest.mark.parametrize("path", EXPERIMENTS, ids=os.path.basename)
def test_every_experiment_resolves_with_declared_options_only(path):
    c = options.resolve(path + ":smoke")   # an undeclared key anywhere would raise
    assert set(c.task_options) == set(TASKS.get(c.task).options), path
    assert set(c.data.options) <= set(options.data_options(c.data.name)), path


def test_kl_weight_from_the_command_line_reaches_the_vae_task():
    c = options.resolve(VAE + ":smoke", ["task_options.kl_weight=0"])
    assert c.task_options.kl_weight == 0.0 and isinstance(c.task_options.kl_weight, float)
    assert c.task_options.compare_autoencoder is True
    from jaxnets.tasks.vae import VAETask

    class Data:   # the VAE task's constructor reads no data
        info = {}
    task = VAETask(c, Data())
    assert task.kl_weight == 0.0 and task.binarize is True   # binarize None -> Bernoulli default


def test_a_task_reads_declared_defaults_for_options_the_config_leaves_out():
    from jaxnets.tasks.vae import VAETask
    c = base_config()
    c.task, c.model = "vae", {"name": "vae", "likelihood": "gaussian"}
    c.task_options = {"kl_weight": 0.5}

    class Data:
        info = {}
    task = VAETask(c, Data())
    assert task.opts == {**VAETask.options, "kl_weight": 0.5}
    assert task.binarize is False and task.likelihood == "gaussian"   # model keyword read, not re-declared


def test_misspelt_options_are_errors_listing_the_known_ones():
    with pytest.raises(UserError, match=r"kl_weight.*knows: .*compare_autoencoder"):
        options.resolve(VAE + ":smoke", ["task_options.kl_wieght=0"])
    with pytest.raises(UserError, match=r"Did you mean kl_weight\?.*Known: binarize"):
        resolve_options("vae", TASKS.get("vae").options, {"kl_wieght": 0.0})


def test_a_model_keyword_the_experiment_did_not_set_can_be_overridden():
    assert "num_kv_heads" not in load_config(LM + ":smoke").model
    c = options.resolve(LM + ":smoke", ["model.num_kv_heads=2"])
    assert c.model.num_kv_heads == 2
    with pytest.raises(UserError, match=r"'model.num_kv_head'.*Did you mean --config.model.num_kv_heads"):
        options.resolve(LM + ":smoke", ["model.num_kv_head=2"])
    for supplied in ("dtype", "lowering"):   # the precision policy's and the platform's, not options
        with pytest.raises(UserError, match=f"'model.{supplied}'"):
            options.resolve(LM + ":smoke", [f"model.{supplied}=x"])


def test_a_data_option_the_experiment_did_not_set_is_declared_and_filled():
    c = options.resolve(LM + ":smoke", ["data.options.test_fraction=0.1"])
    assert c.data.options.test_fraction == 0.1 and c.data.options.seq_len == 128
    with pytest.raises(UserError, match="data.options.seqlen"):
        options.resolve(LM + ":smoke", ["data.options.seqlen=64"])


def test_dict_valued_overrides_check_their_keys():
    with pytest.raises(UserError, match=r"'datta'.*knows: data, fsdp, tensor"):
        options.resolve(LM + ":smoke", ["mesh={'datta': 2}"])
    with pytest.raises(UserError, match=r"'num_kv_head'.*knows:.*num_kv_heads"):
        options.resolve(LM + ":smoke", ["model={'name': 'transformer_lm', 'num_kv_head': 2}"])
    c = options.resolve(LM + ":smoke", ["model={'name': 'rnn_lm', 'hidden': 32}"])
    assert dict(c.model) == {"name": "rnn_lm", "hidden": 32}
    with pytest.raises(UserError, match=r"'seqlen'.*knows:.*seq_len"):
        options.resolve(LM + ":smoke", ["data.options={'seqlen': 64}"])
    c = options.resolve(LM + ":smoke", ["data={'name': 'shakespeare', 'batch_size': 8}"])
    assert c.data.batch_size == 8 and c.data.eval_split == "test"   # merged into the fixed section
    with pytest.raises(UserError, match=r"'batchsize'.*knows:.*batch_size"):
        options.resolve(LM + ":smoke", ["data={'name': 'shakespeare', 'batchsize': 8}"])


def test_mesh_axis_names_are_validated():
    c = load_config(LM + ":smoke")
    with c.unlocked():
        c.mesh = {"data": -1, "modell": 2}
    with pytest.raises(UserError, match=r"'modell'.*Known: data, fsdp, tensor"):
        options.validate(c)


def test_experiment_arguments_are_validated():
    assert load_config(LM + ":smoke").train.steps == 1300
    with pytest.raises(UserError, match=r"no argument 'smok'.*Did you mean smoke\?.*Known: smoke"):
        load_config(LM + ":smok")
    with pytest.raises(UserError, match=r"'depht'.*Known: .*depth"):
        load_config(os.path.join(REPO, "experiments", "resnet_cifar.py") + ":smoke,depht=56")


def test_overrides_of_base_settings_still_refuse_unknown_keys():
    with pytest.raises(UserError, match=r"'train.setps'.*--config.train.steps"):
        apply_overrides(base_config(), ["train.setps=3"], options.declared)


def test_print_config_shows_declared_defaults_and_the_cli_exits_2_on_unknown_keys(capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    assert main(["train", "--config", "experiments/transformer_shakespeare.py:smoke", "--print_config"]) == 0
    out = capsys.readouterr().out
    assert "sample_context: null" in out or "sample_context: None" in out     # a filled task option
    assert "#   num_kv_heads: None" in out                                      # an unset model keyword
    assert main(["train", "--config", "experiments/transformer_shakespeare.py:smok", "--print_config"]) == 2
    assert "Known: smoke" in " ".join(capsys.readouterr().err.split())
    assert main(["train", "--config", "experiments/transformer_shakespeare.py:smoke",
                 "--config.mesh={'dat': 2}", "--print_config"]) == 2
