"""docs/course.md: one row per topic of the course, each with a command that exists here.

The table's commands are written inline (`...`), so the docs check (tests/test_docs.py, which
runs ```bash blocks) does not see them. Here: every `jaxnets train` command loads its config
with every override naming a real key (--print_config); every `python -m benchmarks.NAME`
names a module whose argument parser declares each flag used; every `python -m pytest FILE
-k K` names a file that has a test matching K. Running them is the job of the benchmarks.
"""
import importlib.util
import os
import re
import shlex

import pytest

from helpers import REPO
from jaxnets.cli import main

# Issue 16, item 8: the course's topics, in the table's order.
TOPICS = ("MLP / CNN", "ResNet", "plain nets and degradation", "DenseNet", "RNN", "LSTM", "GRU",
          "seq2seq", "attention", "Transformer", "AutoEncoder", "VAE", "GAN", "DDPM", "text-to-image",
          "precision", "recall", "F1", "confusion matrix", "overfitting", "underfitting", "dropout",
          "vanishing and exploding gradients")


def table() -> list[list[str]]:
    with open(os.path.join(REPO, "docs", "course.md")) as f:
        lines = [ln.strip() for ln in f if ln.startswith("| ")]
    rows = [[c.strip() for c in ln.strip("|").split(" | ")] for ln in lines[1:]]   # [0]: header
    assert all(len(r) == 5 for r in rows), [r[0] for r in rows if len(r) != 5]
    return rows


def commands() -> list[tuple[str, str]]:
    out, previous = [], []
    for topic, _, command_cell, _, _ in table():
        found = re.findall(r"`((?:jaxnets|python -m) [^`]+)`", command_cell)
        if not found and command_cell.startswith("same"):
            found = previous
        assert found, f"{topic}: no command"
        out += [(topic, c) for c in found]
        previous = found
    return out


def test_every_topic_has_a_row_with_a_command():
    topics = [r[0] for r in table()]
    for want in TOPICS:
        assert any(t.lower().startswith(want.lower()) for t in topics), want
    assert {t for t, _ in commands()} == set(topics)


@pytest.mark.parametrize("topic,line", commands(), ids=lambda x: x[:50])
def test_command_exists(topic, line, monkeypatch, capsys):
    monkeypatch.chdir(REPO)
    argv = shlex.split(line)
    if argv[0] == "jaxnets":
        assert argv[1] == "train", line
        assert main(argv[1:] + ["--print_config"]) == 0
        assert "steps" in capsys.readouterr().out
        return
    module = argv[2]
    if module == "pytest":
        path, keyword = argv[3], argv[argv.index("-k") + 1] if "-k" in argv else ""
        source = open(os.path.join(REPO, path)).read()
        assert re.search(rf"def test_\w*{re.escape(keyword)}", source), line
        return
    spec = importlib.util.find_spec(module)
    assert spec is not None and spec.origin.startswith(REPO), line
    source = open(spec.origin).read()
    for flag in (a for a in argv[3:] if a.startswith("--")):
        assert f'"{flag}"' in source, f"{line}: {flag} is not an argument of {module}"
    if "--preset" in argv:
        assert f'"{argv[argv.index("--preset") + 1]}"' in source, line
