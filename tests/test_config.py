import pytest

from jaxnets.config import apply_overrides, load_config, parse_arg
from jaxnets.errors import UserError
from jaxnets.train.defaults import base_config


def test_parse_arg():
    assert parse_arg("smoke,depth=56,residual=False,lr=0.1,name=x") == {
        "smoke": True, "depth": 56, "residual": False, "lr": 0.1, "name": "x"}
    assert parse_arg(None) == {}


def test_overrides_types_and_nesting():
    c = apply_overrides(base_config(), ["train.steps=7", "optim.lr=1", "data.augment=('flip',)",
                                        "optim.nesterov=true", "model.name=mlp"])
    assert c.train.steps == 7 and isinstance(c.optim.lr, float) and c.optim.lr == 1.0
    assert c.data.augment == ("flip",) and c.optim.nesterov is True and c.model.name == "mlp"


def test_unknown_key_names_close_matches():
    with pytest.raises(UserError, match=r"'train.setps'.*--config.train.steps"):
        apply_overrides(base_config(), ["train.setps=3"])
    with pytest.raises(UserError, match="optim.lr"):
        apply_overrides(base_config(), ["optimizer.lr=3"])


def test_wrong_type_is_refused():
    with pytest.raises(UserError, match="expects a int"):
        apply_overrides(base_config(), ["train.steps=abc"])


def test_load_experiment_with_arg():
    smoke = load_config("experiments/mnist_cnn.py:smoke")
    full = load_config("experiments/mnist_cnn.py")
    assert smoke.train.steps < full.train.steps
    with pytest.raises(UserError, match="mnist_cnn.py"):
        load_config("experiments/mnist_cnm.py")
