"""benchmarks/ is split into rooms (speed/, course/, faults/, peers/, gpu/) and every flat
`python -m benchmarks.NAME` command of the docs keeps working through benchmarks.ALIASES."""
import importlib.util
import os
import re
import subprocess
import sys

import benchmarks
from helpers import REPO


def _run(*args):
    env = {**os.environ, "PYTHONPATH": REPO}
    return subprocess.run([sys.executable, "-m", *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120)


def test_every_room_module_has_its_flat_name_and_every_alias_a_file():
    for room in ("speed", "course"):
        folder = os.path.join(REPO, "benchmarks", room)
        modules = {f[:-3] for f in os.listdir(folder) if f.endswith(".py") and not f.startswith("_")}
        assert modules, room
        for name in modules:
            assert benchmarks.ALIASES[name] == (f"benchmarks.{room}.{name}", ()), name
    for name, (module, _) in benchmarks.ALIASES.items():
        spec = importlib.util.find_spec(f"benchmarks.{name}")
        assert spec.origin == importlib.util.find_spec(module).origin, name
        assert os.path.isfile(spec.origin) and spec.origin.startswith(REPO), name


def test_no_flat_module_file_left_beside_the_rooms():
    flat = {f for f in os.listdir(os.path.join(REPO, "benchmarks")) if f.endswith(".py")}
    assert flat == {"__init__.py", "common.py", "peak.py", "report.py"}   # shared by every room


def test_documented_benchmark_commands_name_runnable_modules():
    text = ""
    for path in ["README.md", *(os.path.join("docs", f) for f in os.listdir(os.path.join(REPO, "docs")))]:
        if path.endswith(".md"):
            text += open(os.path.join(REPO, path)).read()
    names = set(re.findall(r"python -m benchmarks\.([a-z0-9_]+)", text))
    assert {"resnet_step_compare", "faults", "lstm", "transformer_step", "report"} <= names
    for name in names:
        assert importlib.util.find_spec(f"benchmarks.{name}") is not None, name


def test_flat_name_imports_the_room_module_itself():
    import benchmarks.decode
    from benchmarks.speed import decode
    assert benchmarks.decode is decode


def test_python_m_flat_name_runs_the_room_module_with_the_alias_flags():
    # resnet_step_compare is `resnet_step --compare`: adding --levers must clash with the injected flag.
    out = _run("benchmarks.resnet_step_compare", "--levers")
    assert out.returncode == 2 and "not allowed with argument --compare" in out.stderr, out.stderr
    out = _run("benchmarks.faults", "--help")
    assert out.returncode == 0 and "--smoke" in out.stdout, out.stderr
    out = _run("benchmarks.decode", "--help")
    assert out.returncode == 0 and "--length" in out.stdout, out.stderr
