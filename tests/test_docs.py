"""The docs check: every command and Python block in docs/ runs.

- ```python blocks run as written (the worked NNX example trains and decodes);
- `jaxnets list` runs; `jaxnets train ...` runs with --print_config (the config loads and
  every override names a real key); the workdir commands parse their documented flags and
  stop at an absent workdir with exit 2 (tests/test_commands.py runs them end to end);
- `python -m benchmarks.NAME ...` runs and ends with its JSON line;
- `pip ...` lines are run by CI (.ci/run installs .[dev]; .ci/wheel_smoke builds the wheel);
- docs/configuration.md equals what `python -m jaxnets.train.config_reference` generates.
"""
import glob
import json
import os
import re
import shlex
import subprocess
import sys

import pytest

from helpers import REPO
from jaxnets.cli import main

DOCS = sorted(glob.glob(os.path.join(REPO, "docs", "*.md")))


def blocks(lang):
    for path in DOCS:
        for body in re.findall(rf"```{lang}\n(.*?)```", open(path).read(), re.S):
            yield os.path.basename(path), body


def shell_commands():
    """One entry per command: continuation lines joined, comments skipped, `srun` (a SLURM
    template's launcher) dropped so the jaxnets command after it is checked."""
    commands = []
    for name, body in blocks("bash"):
        for line in body.replace("\\\n", " ").splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                commands.append((name, re.sub(r"^srun\s+", "", line)))
    return commands


def test_docs_exist_and_have_commands():
    names = {os.path.basename(p) for p in DOCS}
    assert {"getting-started.md", "using-modules.md", "extending.md", "configuration.md",
            "results.md", "architecture.md"} <= names
    assert len(shell_commands()) >= 8


@pytest.mark.parametrize("name,line", shell_commands(), ids=lambda x: x[:60] if isinstance(x, str) else x)
def test_shell_command(name, line, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(REPO)
    argv = shlex.split(line)
    if argv[0] == "pip":
        return                                   # CI: .ci/run and .ci/wheel_smoke
    if argv[0] == "python":
        proc = subprocess.run([sys.executable, *argv[1:]], cwd=REPO, capture_output=True,
                              text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert "results" in json.loads(proc.stdout.strip().splitlines()[-1])
        return
    assert argv[0] == "jaxnets", f"{name}: unexpected command {line!r}"
    sub = argv[1]
    if sub == "list":
        assert main(argv[1:]) == 0
    elif sub in ("train", "launch"):
        if sub == "launch":   # the launcher's own flags parse; the job after `--` must load
            from jaxnets.parallel.launch import parse
            argv = ["jaxnets", *parse(argv[2:])[1]]
        assert main(argv[1:] + ["--print_config"]) == 0
        assert "steps" in capsys.readouterr().out
    else:
        argv[argv.index("--workdir") + 1] = str(tmp_path / "absent")   # a clone may hold runs/
        assert main(argv[1:]) == 2
        assert "does not exist" in " ".join(capsys.readouterr().err.split())   # wrapped lines


@pytest.mark.parametrize("name,body", list(blocks("python")), ids=lambda x: x.split("\n")[0][:40])
def test_python_block(name, body, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    exec(compile(body, name, "exec"), {"__name__": "__docs__"})


def test_configuration_reference_is_generated():
    from jaxnets.train.config_reference import render

    with open(os.path.join(REPO, "docs", "configuration.md")) as f:
        assert f.read() == render(), "run: python -m jaxnets.train.config_reference > docs/configuration.md"
