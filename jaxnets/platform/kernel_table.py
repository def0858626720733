"""The kernel table: which kernel each operation of a run takes, written once by `jaxnets tune`.

    {"format": 1, "written_by": {...machine, jax version, command...},
     "conv3x3_filter_grad": {"128x32x32x16->16": {"choice": "native", "native_ms": .., "xla_ms": ..}}}

Runs read it (`config.platform.kernel_table=PATH`) before tracing, so the compiled program
depends on the table's contents only: two hosts (even of different instruction sets) given one
table compile the same program. Without a table the fixed rule of `jaxnets.platform.lowering_rule`
applies. The timings are kept as the evidence for each choice.
"""
from __future__ import annotations

import json
import os
import tempfile

from jaxnets.errors import UserError

FORMAT = 1
FILTER_GRAD = "conv3x3_filter_grad"
CHOICES = ("native", "xla")


def load(path: str) -> dict:
    """The table at `path` ({} for ""); UserError if it cannot be read or is malformed."""
    if not path:
        return {}
    try:
        with open(path) as f:
            table = json.load(f)
    except OSError as e:
        raise UserError(f"Cannot read kernel table {path!r} ({e.strerror or e}); write one with "
                        "`jaxnets tune --config ... --out PATH` or leave platform.kernel_table empty.") from None
    except ValueError as e:
        raise UserError(f"Kernel table {path!r} is not JSON ({e}); rewrite it with `jaxnets tune`.") from None
    check(table, path)
    return table


def check(table, path: str = "the kernel table") -> None:
    if not isinstance(table, dict) or table.get("format") != FORMAT:
        raise UserError(f"{path}: not a jaxnets kernel table of format {FORMAT} (write it with `jaxnets tune`).")
    for key, entry in table.get(FILTER_GRAD, {}).items():
        if not isinstance(entry, dict) or entry.get("choice") not in CHOICES:
            raise UserError(f"{path}: {FILTER_GRAD}[{key!r}] must have a choice in {CHOICES}, got {entry!r}.")


def filter_grad_entries(table: dict) -> tuple[tuple[str, str], ...]:
    """((shape key, choice), ...) sorted: the hashable form a `ConvLowering` carries."""
    return tuple(sorted((k, v["choice"]) for k, v in table.get(FILTER_GRAD, {}).items()))


def save(table: dict, path: str) -> None:
    """Write atomically (a temporary file renamed), so a reader never sees half a table."""
    check(table, path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".json", dir=folder)
    with os.fdopen(fd, "w") as f:
        json.dump(table, f, indent=1, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)
