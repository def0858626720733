"""Options declared once: every configurable name has one declaration, with its default.

    config section   declared by                                     read with
    task_options     the task class's `options` dict                 Task.opts
    model, model_*   the model constructor's keywords                jaxnets.models.model_options
                     (less dtype and lowering, which the task and platform supply)
    data.options     the dataset loader's keywords                   jaxnets.data.DATASETS
    mesh             train.defaults.base_config().mesh (axis names)  jaxnets.parallel
    everything else  train.defaults.base_config()

An experiment sets only what differs; `--config.model.num_kv_heads=2` works whether or not the
experiment set it, `--print_config` shows the defaults of what it left unset, and a key
declared nowhere is refused (exit 2, listing the known ones) wherever it comes from: the
experiment file, a `--config.KEY=VALUE` override or a dict-valued override.
"""
from __future__ import annotations

import inspect
from typing import Any

import ml_collections

from jaxnets.config import apply_overrides, load_config
from jaxnets.data import DATASETS
from jaxnets.errors import unknown_names
from jaxnets.models import model_options
from jaxnets.tasks import TASKS
from jaxnets.train.defaults import base_config


# Model keywords that are not config options: the precision policy (train.compute_dtype) and
# the platform (config.platform) supply them to every model a task builds.
SUPPLIED_MODEL_KEYWORDS = ("dtype", "lowering")


def config_model_options(name: str) -> dict[str, Any]:
    """Model `name`'s options as a config sets them: its constructor keywords with plain
    defaults (numbers, strings, tuples, None), less SUPPLIED_MODEL_KEYWORDS."""
    plain = (type(None), bool, int, float, str, tuple, list)
    return {k: v for k, v in model_options(name).items()
            if k not in SUPPLIED_MODEL_KEYWORDS and isinstance(v, plain)}


def model_sections(config) -> list[str]:
    """Top-level sections naming a model: `model`, and e.g. a GAN's `model_d`."""
    return [k for k, v in config.items() if (k == "model" or k.startswith("model_"))
            and isinstance(v, ml_collections.ConfigDict) and v.get("name")]


def data_options(name: str, required: bool = True) -> dict[str, Any]:
    """The dataset loader's keywords and their defaults (None for a required one, which is
    left out with required=False)."""
    params = inspect.signature(DATASETS.get(name)).parameters.items()
    return {k: (None if p.default is inspect.Parameter.empty else p.default) for k, p in params
            if p.kind not in (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL)
            and (required or p.default is not inspect.Parameter.empty)}


def task_options(name: str) -> dict[str, Any]:
    return dict(TASKS.get(name).options)


def declared(config, section: str) -> dict[str, Any] | None:
    """The keys `section` declares beyond those the config holds, with their defaults."""
    if section in model_sections(config):
        return config_model_options(config[section].name)
    if section == "data.options" and config.get("data", {}).get("name"):
        return data_options(config.data.name)
    if section == "task_options" and config.get("task"):
        return task_options(config.task)
    return None


def validate(config) -> None:
    """Every key set in a declared section is declared there; mesh axes are known axes."""
    for section in model_sections(config):
        known = set(config_model_options(config[section].name)) | {"name"}
        unknown = [k for k in config[section] if k not in known]
        if unknown:
            raise unknown_names(f"config.{section} (model {config[section].name!r})", "option", unknown, known)
    if config.get("data", {}).get("name"):
        known = data_options(config.data.name)
        unknown = [k for k in config.data.get("options") or {} if k not in known]
        if unknown:
            raise unknown_names(f"config.data.options (dataset {config.data.name!r})", "option", unknown, known)
    if config.get("task"):
        known = task_options(config.task)
        unknown = [k for k in config.get("task_options") or {} if k not in known]
        if unknown:
            raise unknown_names(f"Task {config.task!r} (config.task_options)", "option", unknown, known)
    axes = base_config().mesh
    unknown = [k for k in config.get("mesh") or {} if k not in axes]
    if unknown:
        raise unknown_names("config.mesh (axis name -> size)", "option", unknown, axes)


def resolve(spec: str, overrides: list[str] = ()) -> ml_collections.ConfigDict:
    """`file.py[:arg]` loaded, overridden ("a.b=value" strings) and validated; task and data
    options filled with their declared defaults (a model section keeps only what was set:
    unset keywords are the task's to supply, e.g. num_classes from the data)."""
    config = apply_overrides(load_config(spec), list(overrides), declared)
    validate(config)
    with config.unlocked():
        if config.get("task"):
            config.task_options = {**task_options(config.task), **(config.get("task_options") or {})}
        if config.get("data", {}).get("name"):
            config.data.options = {**data_options(config.data.name, required=False), **(config.data.get("options") or {})}
    return config


def describe(config) -> str:
    """The config as `--print_config` shows it: every setting, then each model section's
    keywords left at the constructor's default (a task may supply some from the data)."""
    lines = [str(config).rstrip()]
    for section in model_sections(config):
        unset = {k: v for k, v in config_model_options(config[section].name).items() if k not in config[section]}
        if unset:
            lines.append(f"# {section} ({config[section].name}): keywords left to their default "
                         f"(set with --config.{section}.KEY=VALUE; the task supplies some from the data):")
            lines += [f"#   {k}: {v!r}" for k, v in unset.items()]
    return "\n".join(lines)
