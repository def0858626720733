"""Experiment configs: Python files with `get_config(arg)`, plus `--config.KEY=VALUE` overrides.

    jaxnets train --config experiments/mnist_cnn.py:smoke --workdir runs/x --config.train.steps=200

`arg` is free text handed to `get_config`; `parse_arg` turns the usual "smoke,depth=56" form into
a dict, and `load_config` refuses a name the experiment never looked up in it (so an experiment
reads each argument it knows on every path: `smoke, mnist = args.get("smoke"), args.get("mnist")`).
Overrides must name an existing or declared key (`declared`, e.g. jaxnets.options.declared): a
typo is an error naming the close matches, never a silently ignored setting.
"""
from __future__ import annotations

import ast
import difflib
import importlib.util
import os
import traceback
from typing import Any, Callable

import ml_collections

from jaxnets.errors import UserError, unknown_names


class ExperimentArgs(dict):
    """The parsed experiment argument; remembers which names the experiment looked up, so that
    `load_config` can refuse a name no experiment code reads (a typo such as `:smok`)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.read: set[str] = set()

    def get(self, key, default=None):
        self.read.add(key)
        return super().get(key, default)

    def __getitem__(self, key):
        self.read.add(key)
        return super().__getitem__(key)

    def __contains__(self, key):
        self.read.add(key)
        return super().__contains__(key)


# The ExperimentArgs that parse_arg handed out while load_config runs a get_config.
_ARGS_HANDED_OUT: list[ExperimentArgs] = []


def parse_arg(arg: str | None) -> ExperimentArgs:
    """"smoke,depth=56,residual=False" -> {"smoke": True, "depth": 56, "residual": False}."""
    out = ExperimentArgs()
    for part in filter(None, (p.strip() for p in (arg or "").split(","))):
        key, sep, value = part.partition("=")
        dict.__setitem__(out, key.strip(), _parse_value(value.strip()) if sep else True)
    _ARGS_HANDED_OUT.append(out)
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
    if arg and not _takes_arg(module.get_config):
        raise UserError(f"Config file {path!r} takes no argument (its get_config() has no parameter); "
                        f"drop ':{arg}'.")
    del _ARGS_HANDED_OUT[:]
    try:
        config = module.get_config(arg or None) if _takes_arg(module.get_config) else module.get_config()
        config = ml_collections.ConfigDict(config)
    except UserError:
        raise
    except Exception as e:   # noqa: BLE001
        call = f"get_config({arg!r})" if arg else "get_config()"
        raise UserError(f"{call} in {path!r} failed: {_where(e, path)}.") from e
    _check_experiment_args(path, arg)
    return config


def _check_experiment_args(path: str, arg: str) -> None:
    """Every name in `file.py:a,b=1` must be one the experiment reads (through parse_arg)."""
    given = parse_arg(arg)
    handed_out = _ARGS_HANDED_OUT[:-1]   # the last one is `given`, parsed just now
    del _ARGS_HANDED_OUT[:]
    if not given or not handed_out:   # no argument, or an experiment that parses it itself
        return
    known = set().union(*(a.read for a in handed_out))
    unknown = [k for k in given if k not in known]
    if unknown:
        raise unknown_names(f"Experiment {path!r}", "argument", unknown, known)


def _where(error: BaseException, path: str) -> str:
    """'ValueError: message (line N)' with the deepest line inside the config file."""
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


# A section's declared keys and their defaults beyond those the config holds (None: only the
# config's own keys), e.g. a model's constructor keywords: jaxnets.options.declared.
Declared = Callable[[ml_collections.ConfigDict, str], "dict[str, Any] | None"]


def apply_overrides(config: ml_collections.ConfigDict, overrides: list[str],
                    declared: Declared | None = None) -> ml_collections.ConfigDict:
    """Apply "a.b=value" strings in order; unknown keys raise UserError naming close matches.

    A key the config does not hold yet may be set when `declared(config, section)` declares it
    (a model keyword the experiment left at its default). A dict value (`--config.mesh="{'data': 2}"`)
    may only name keys that section holds or declares; it replaces a declared section (a model,
    task_options, data.options) and is merged into a fixed one (data, train, mesh, ...)."""
    declared = declared or (lambda config, section: None)
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
        section = ".".join(parents)
        extra = declared(config, section) or {}
        if leaf not in node and leaf not in extra:
            _unknown_key(config, key, extra, section)
        old = node[leaf] if leaf in node else extra[leaf]
        parsed = _parse_value(text)
        if isinstance(old, str) and isinstance(parsed, (int, float)) and not isinstance(parsed, bool):
            parsed = text   # a string setting that looks like a number, e.g. cpu_devices=2
        if isinstance(old, ml_collections.ConfigDict) and isinstance(parsed, dict):
            _check_section_keys(config, key, old, parsed, declared)
            if declared(config, key) is None:   # a fixed section (data, train, mesh...): merged into
                parsed = {**old.to_dict(), **parsed}
        value = _coerce(parsed, old, key)
        with node.unlocked():
            node[leaf] = value
    return config


def _check_section_keys(config, key: str, old: ml_collections.ConfigDict, new: dict, declared: Declared) -> None:
    known = set(old) | set(declared(config, key) or {})
    if "name" in new and new.get("name") != old.get("name") and "." not in key:
        probe = ml_collections.ConfigDict(config.to_dict())
        with probe.unlocked():
            probe[key] = {"name": new["name"]}
        other = declared(probe, key)
        if other is not None:   # another model: its own keywords, not the old model's
            known = set(other) | {"name"}
    unknown = sorted(k for k in new if k not in known)
    if unknown:
        raise UserError(f"--config.{key} names unknown key(s) {', '.join(map(repr, unknown))}; "
                        f"config.{key} knows: {', '.join(sorted(known)) or '(none)'}.")


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


def _unknown_key(config: ml_collections.ConfigDict, key: str, extra: dict | None = None, section: str = ""):
    known = flat_keys(config) + [f"{section}.{k}" if section else k for k in (extra or {})]
    close = difflib.get_close_matches(key, known, n=3, cutoff=0.6)
    leaf_close = [k for k in known if k.rsplit(".", 1)[-1] == key.rsplit(".", 1)[-1]]
    suggestions = list(dict.fromkeys(close + leaf_close))[:4]
    hint = f" Did you mean {', '.join('--config.' + s for s in suggestions)}?" if suggestions else ""
    parent = key.rpartition(".")[0]
    siblings = sorted({k[len(parent) + 1:].split(".")[0] for k in known if parent and k.startswith(parent + ".")}
                      if parent else {k.split(".")[0] for k in known})
    listing = f" config{'.' + parent if parent else ''} knows: {', '.join(siblings)}." if siblings else ""
    raise UserError(f"Unknown config key {key!r}: the experiment config has no such setting and none "
                    f"is declared.{hint}{listing} Print them with "
                    "`jaxnets train --config FILE --print_config`.")
