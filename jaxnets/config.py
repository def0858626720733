"""Experiment configs: Python files with `get_config(arg)`, plus `--config.KEY=VALUE` overrides.

    jaxnets train --config experiments/mnist_cnn.py:smoke --workdir runs/x --config.train.steps=200

`arg` is free text handed to `get_config`; `parse_arg` turns the usual "smoke,depth=56" form into
a dict. Overrides must name an existing key: a typo is an error naming the close matches,
never a silently ignored setting.
"""
from __future__ import annotations

import ast
import difflib
import importlib.util
import os
from typing import Any

import ml_collections

from jaxnets.errors import UserError


def parse_arg(arg: str | None) -> dict[str, Any]:
    """"smoke,depth=56,residual=False" -> {"smoke": True, "depth": 56, "residual": False}."""
    out: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in (arg or "").split(","))):
        key, sep, value = part.partition("=")
        out[key.strip()] = _parse_value(value.strip()) if sep else True
    return out


def _parse_value(text: str) -> Any:
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    if text.lower() in ("none", "null"):
        return None
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def load_config(spec: str) -> ml_collections.ConfigDict:
    """Load `path/to/file.py[:arg]` by calling its `get_config(arg)`."""
    path, _, arg = spec.partition(":")
    if not os.path.isfile(path):
        here = os.path.dirname(path) or "."
        known = sorted(f for f in os.listdir(here) if f.endswith(".py")) if os.path.isdir(here) else []
        close = difflib.get_close_matches(os.path.basename(path), known, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise UserError(f"Config file {path!r} does not exist.{hint} "
                        "Run `jaxnets list` to see the experiments.")
    # An experiment file is Python: it runs with the user's rights, like any script they run.
    # Its own errors are the user's to fix, so they become one-paragraph UserErrors naming the
    # file and line (`jaxnets --debug train ...` shows the traceback).
    module_spec = importlib.util.spec_from_file_location(f"jaxnets_config_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except SyntaxError as e:
        raise UserError(f"Config file {path!r} is not valid Python: {e.msg} at line {e.lineno}"
                        f"{': ' + e.text.strip() if e.text else ''}.") from e
    except OSError as e:
        raise UserError(f"Cannot read config file {path!r} ({e.strerror or e}).") from e
    except Exception as e:   # noqa: BLE001 - the file's own code failed while being imported
        raise UserError(f"Config file {path!r} failed while loading: {_where(e, path)}.") from e
    if not callable(getattr(module, "get_config", None)):
        raise UserError(f"Config file {path!r} defines no get_config(arg) function.")
    try:
        config = module.get_config(arg or None) if _takes_arg(module.get_config) else module.get_config()
        config = ml_collections.ConfigDict(config)
    except UserError:
        raise
    except Exception as e:   # noqa: BLE001
        call = f"get_config({arg!r})" if arg else "get_config()"
        raise UserError(f"{call} in {path!r} failed: {_where(e, path)}.") from e
    return with_task_options(config)


def _where(error: BaseException, path: str) -> str:
    """'ValueError: message (line N)' with the deepest line inside the config file."""
    import traceback

    lines = [f.lineno for f in traceback.extract_tb(error.__traceback__)
             if os.path.abspath(f.filename) == os.path.abspath(path)]
    where = f" (line {lines[-1]})" if lines else ""
    return f"{type(error).__name__}: {error}{where}"


def validate_config(config: ml_collections.ConfigDict) -> None:
    """Settings that would otherwise fail late or strangely: counts must be positive integers."""
    positive = ["train.steps", "train.log_every", "train.eval_every", "train.checkpoint_every",
                "train.keep_checkpoints", "train.max_nonfinite_steps", "data.batch_size",
                "data.eval_batch_size"]
    for key in positive:
        section, leaf = key.split(".")
        if leaf not in config.get(section, {}):
            continue
        value = config[section][leaf]
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise UserError(f"config.{key} must be a positive integer, got {value!r} "
                            f"(e.g. --config.{key}=100).")


def with_task_options(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Fill `task_options` with the task class's declared `options` (name -> default), so that
    every option can be overridden (`--config.task_options.kl_weight=0`) and printed, and an
    option the task does not declare is an error instead of a silently ignored setting."""
    if not config.get("task"):
        return config
    from jaxnets.tasks import TASKS
    declared = getattr(TASKS.get(config.task), "options", None)
    if declared is None:   # a task that declares nothing keeps its free-form options
        return config
    given = dict(config.get("task_options") or {})
    for key in given:
        if key not in declared:
            close = difflib.get_close_matches(key, list(declared), n=3, cutoff=0.6)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise UserError(f"Task {config.task!r} has no option {key!r}.{hint} Its options: "
                            f"{', '.join(sorted(declared)) or '(none)'}.")
    with config.unlocked():
        config.task_options = ml_collections.ConfigDict({**declared, **given})
    return config


def _takes_arg(fn) -> bool:
    return fn.__code__.co_argcount > 0


def flat_keys(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
    keys = []
    for key, value in config.items():
        name = f"{prefix}{key}"
        keys.append(name)
        if isinstance(value, ml_collections.ConfigDict):
            keys.extend(flat_keys(value, name + "."))
    return keys


def apply_overrides(config: ml_collections.ConfigDict, overrides: list[str]) -> ml_collections.ConfigDict:
    """Apply "a.b=value" strings in order; unknown keys raise UserError naming close matches."""
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep:
            raise UserError(f"Override {item!r} has no '=': write --config.{key}=VALUE.")
        *parents, leaf = key.split(".")
        node = config
        for depth, part in enumerate(parents):
            child = node.get(part) if isinstance(node, ml_collections.ConfigDict) else None
            if not isinstance(child, ml_collections.ConfigDict):
                _unknown_key(config, ".".join(parents[: depth + 1]))
            node = child
        if leaf not in node:
            _unknown_key(config, key)
        old = node[leaf]
        parsed = _parse_value(text)
        if isinstance(old, str) and isinstance(parsed, (int, float)) and not isinstance(parsed, bool):
            parsed = text   # a string setting that looks like a number, e.g. cpu_devices=2
        value = _coerce(parsed, old, key)
        with node.unlocked():
            node[leaf] = value
    return config


def _coerce(value: Any, old: Any, key: str) -> Any:
    if old is None or value is None or isinstance(old, ml_collections.ConfigDict):
        return value
    if isinstance(old, bool):
        if not isinstance(value, bool):
            raise UserError(f"--config.{key} expects true/false, got {value!r}.")
        return value
    if isinstance(old, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(old, (tuple, list)) and isinstance(value, (str, int, float)):
        value = (value,)
    if isinstance(old, tuple) and isinstance(value, list):
        value = tuple(value)
    if type(value) is not type(old) and not (isinstance(old, (tuple, list)) and isinstance(value, (tuple, list))):
        raise UserError(f"--config.{key} expects a {type(old).__name__} (currently {old!r}), "
                        f"got {value!r} ({type(value).__name__}).")
    return value


def _unknown_key(config: ml_collections.ConfigDict, key: str):
    known = flat_keys(config)
    close = difflib.get_close_matches(key, known, n=3, cutoff=0.6)
    leaf_close = [k for k in known if k.rsplit(".", 1)[-1] == key.rsplit(".", 1)[-1]]
    suggestions = list(dict.fromkeys(close + leaf_close))[:4]
    hint = f" Did you mean {', '.join('--config.' + s for s in suggestions)}?" if suggestions else ""
    raise UserError(f"Unknown config key {key!r}: the experiment config has no such setting.{hint} "
                    "Keys can only be overridden, not added; print the config with "
                    "`jaxnets train --config FILE --print_config` to see them all.")
