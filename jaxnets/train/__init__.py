"""The one trainer. `from jaxnets.train import train, Trainer`."""
from jaxnets.registry import lazy_module_getattr

__getattr__ = lazy_module_getattr(__name__, {
    "train": "jaxnets.train.trainer:train",
    "Trainer": "jaxnets.train.trainer:Trainer",
    "base_config": "jaxnets.train.defaults:base_config",
})
