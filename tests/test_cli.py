"""The command line: one-paragraph errors with exit status 2, `list`, and the smoke experiment."""
import json

import pytest

from helpers import run_cli


@pytest.mark.parametrize("args,expected", [
    (["--config.train.setps=3"], "Did you mean --config.train.steps"),
    (["--config.data.name=mnist5kk"], "Unknown dataset 'mnist5kk'. Did you mean 'mnist5k'"),
    (["--config.model.name=cnnn"], "Unknown model 'cnnn'"),
    (["--config.cpu_devices=many"], "must be 'auto', 'cores' or a positive number"),
])
def test_bad_input_is_one_paragraph_and_exit_2(tmp_path, args, expected):
    result = run_cli("train", "--config", "experiments/mnist_cnn.py:smoke", "--workdir",
                     str(tmp_path), *args)
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and expected in " ".join(result.stderr.split())
    assert "Traceback" not in result.stderr


def test_error_paragraph_keeps_paths_whole(tmp_path):
    # A long hyphenated path (pytest-xdist's tmp dirs are such) is never split across lines, so
    # it can be copied from the terminal and found by tools that search stderr.
    workdir = str(tmp_path / ("a-long-hyphenated-workdir-name-" * 4 + "end") / "run-1")
    result = run_cli("eval", "--workdir", workdir)
    assert result.returncode == 2 and result.stderr.startswith("error: ")
    assert workdir in result.stderr, result.stderr


def test_unknown_experiment_and_list():
    result = run_cli("train", "--config", "experiments/nope.py", "--workdir", "/tmp/x")
    assert result.returncode == 2 and "does not exist" in result.stderr
    listing = run_cli("list")
    assert listing.returncode == 0
    for name in ("mnist5k", "digits", "shakespeare", "cnn", "mnist_cnn", "classification"):
        assert name in listing.stdout


def test_mnist_cnn_smoke_reaches_95_percent(tmp_path):
    result = run_cli("train", "--config", "experiments/mnist_cnn.py:smoke", "--workdir", str(tmp_path),
                     env_extra={"XLA_FLAGS": ""})
    assert result.returncode == 0, result.stdout + result.stderr
    final = json.load(open(tmp_path / "final.json"))
    assert final["step"] == 300 and final["metrics"]["eval/accuracy"] >= 0.95
    rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert any("train/loss" in r for r in rows) and any("eval/accuracy" in r for r in rows)
