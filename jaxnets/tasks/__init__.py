"""Objectives. A task builds its modules and defines pure train/eval steps; the trainer does the rest.

See `jaxnets/tasks/base.py` for the contract every task follows.
"""
from jaxnets.registry import Registry

TASKS = Registry("task", {
    "classification": "jaxnets.tasks.classification:ClassificationTask",
})
