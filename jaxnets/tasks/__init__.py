"""Objectives. A task builds its modules and defines pure train/eval steps; the trainer does the rest.

See `jaxnets/tasks/base.py` for the contract every task follows.
"""
from jaxnets.registry import Registry

TASKS = Registry("task", {
    "classification": "jaxnets.tasks.classification:ClassificationTask",
    "language_model": "jaxnets.tasks.language_model:LanguageModelTask",
    "seq2seq": "jaxnets.tasks.seq2seq:Seq2SeqTask",
    "sequence_labeling": "jaxnets.tasks.sequence_labeling:SequenceLabelingTask",
    "autoencoder": "jaxnets.tasks.reconstruction:AutoEncoderTask",
    "vae": "jaxnets.tasks.vae:VAETask",
    "gan": "jaxnets.tasks.gan:GANTask",
    "diffusion": "jaxnets.tasks.diffusion:DiffusionTask",
})
