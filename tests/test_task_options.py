"""Task options: each task declares its options with defaults; configs get them merged in."""
import glob
import os

import pytest

from jaxnets.config import apply_overrides, load_config, with_task_options
from jaxnets.errors import UserError
from jaxnets.tasks import TASKS
from jaxnets.train.defaults import base_config
from helpers import REPO


def test_every_task_declares_its_options():
    for name in TASKS.names():
        assert isinstance(getattr(TASKS.get(name), "options", None), dict), name


def test_every_experiment_loads_with_its_tasks_declared_options():
    for path in sorted(glob.glob(os.path.join(REPO, "experiments", "*.py"))):
        c = load_config(path + ":smoke")   # an undeclared option in a config file would raise
        declared = TASKS.get(c.task).options
        assert set(c.task_options) == set(declared), path


def test_kl_weight_from_the_command_line_reaches_the_vae_task():
    c = load_config(os.path.join(REPO, "experiments", "vae_mnist.py") + ":smoke")
    assert c.task_options.kl_weight == 1.0 and c.task_options.compare_autoencoder is True
    c = apply_overrides(c, ["task_options.kl_weight=0"])
    assert c.task_options.kl_weight == 0.0 and isinstance(c.task_options.kl_weight, float)
    from jaxnets.tasks.vae import VAETask

    class Data:   # the VAE task's constructor reads no data
        info = {}
    task = VAETask(c, Data())
    assert task.kl_weight == 0.0 and task.binarize is True   # binarize None -> Bernoulli default


def test_misspelt_options_are_errors():
    c = load_config(os.path.join(REPO, "experiments", "vae_mnist.py") + ":smoke")
    with pytest.raises(UserError, match="kl_weight"):
        apply_overrides(c, ["task_options.kl_wieght=0"])
    c = base_config()
    c.task = "vae"
    c.task_options = {"kl_wieght": 0.0}
    with pytest.raises(UserError, match="Did you mean kl_weight"):
        with_task_options(c)
