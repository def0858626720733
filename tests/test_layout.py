"""The house's names and seams: no two package modules share a file name, none shadows the
standard library, and the commands reach models only through the tasks' entry points."""
import os
import re
import sys

from helpers import REPO
from jaxnets.tasks import TASKS
from jaxnets.tasks.base import ENTRY_POINTS, Task

PACKAGE = os.path.join(REPO, "jaxnets")


def _modules():
    for root, _, files in os.walk(PACKAGE):
        for f in files:
            if f.endswith(".py") and f not in ("__init__.py", "__main__.py"):
                yield os.path.relpath(os.path.join(root, f), REPO)


def test_no_two_modules_share_a_file_name():
    seen = {}
    for path in _modules():
        seen.setdefault(os.path.basename(path), []).append(path)
    assert {k: v for k, v in seen.items() if len(v) > 1} == {}


def test_no_module_shadows_the_standard_library():
    shadows = [p for p in _modules() if os.path.basename(p)[:-3] in sys.stdlib_module_names]
    assert shadows == []


def test_commands_and_export_never_probe_models_or_call_private_task_methods():
    for name in ("commands.py", "export.py"):
        source = open(os.path.join(PACKAGE, name)).read()
        assert "hasattr(" not in source, name
        assert not re.search(r"task\._[a-z]", source), name


def test_every_declared_entry_point_is_implemented():
    for name in TASKS.names():
        cls = TASKS.get(name)
        assert cls.entry_points <= set(ENTRY_POINTS), name
        assert "export" in cls.entry_points, name   # every task exports its inference function
        for entry in cls.entry_points:
            method = "inference_fn" if entry == "export" else entry
            assert getattr(cls, method) is not getattr(Task, method), (name, entry)
