"""The configuration reference (docs/configuration.md), generated from `defaults.py`.

    python -m jaxnets.train.config_reference > docs/configuration.md

Every key of `base_config()` with its default and the comment written next to it in
defaults.py; tests/test_docs.py checks the committed page is up to date.
"""
from __future__ import annotations

import inspect
import re

from jaxnets.train import defaults

HEADER = """# Configuration reference

Generated from `jaxnets/train/defaults.py` by `python -m jaxnets.train.config_reference`; do
not edit by hand. Every experiment config starts from these defaults; change any key with
`--config.KEY=VALUE` (the key must exist or be declared) and print a resolved config with
`jaxnets train --config FILE --print_config`. `task_options`, `model` and `data.options` hold
the options declared by the task (its `options`), the model constructor (its keywords) and
the dataset loader (its keywords), each in one place (`jaxnets/options.py`); `--print_config`
shows an experiment's, defaults included, and an undeclared key is refused.

| key | default | meaning |
|---|---|---|
"""


def rows() -> list[tuple[str, str, str]]:
    """(key, default, comment) in the order defaults.py sets them."""
    config = defaults.base_config()
    out, pending = [], ""
    for line in inspect.getsource(defaults.base_config).splitlines():
        line = line.strip()
        if line.startswith("#"):      # a comment block above a key describes it
            pending = (pending + " " + line.lstrip("# ")).strip()
            continue
        m = re.match(r"c\.([\w.]+)\s*=\s*(.*?)(?:\s+#\s*(.*))?$", line)
        if not m:
            continue
        key, comment = m.group(1), m.group(3) or pending
        pending = ""
        value = config
        for part in key.split("."):
            value = value[part]
        shown = "{}" if hasattr(value, "to_dict") and not value.to_dict() else repr(
            value.to_dict() if hasattr(value, "to_dict") else value)
        if hasattr(value, "to_dict") and key in ("train", "optim", "data"):
            continue                  # section headers: their keys follow
        out.append((key, shown, comment))
    return out


def render() -> str:
    body = "".join(f"| `{k}` | `{v}` | {c.replace('|', '/')} |\n" for k, v, c in rows())
    return HEADER + body


if __name__ == "__main__":
    print(render(), end="")
