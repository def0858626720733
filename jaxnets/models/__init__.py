"""Model families: one file each, a Flax NNX module plus a small factory, no training code.

Call convention for every model: `model(x, *, train=False, rngs=None)`; `train` switches
dropout and batch-norm statistics, `rngs` (an `nnx.Rngs` with a 'dropout' stream) supplies
the randomness of a training call. Import a class directly: `from jaxnets.models import ResNet`.
"""
from jaxnets.registry import Registry, lazy_module_getattr

# Public classes, imported on first attribute access.
_EXPORTS = {
    "MLP": "jaxnets.models.cnn:MLP",
    "CNN": "jaxnets.models.cnn:CNN",
    "ResNet": "jaxnets.models.resnet:ResNet",
    "PlainNet": "jaxnets.models.resnet:PlainNet",
    "PreActResNet": "jaxnets.models.resnet:PreActResNet",
    "DenseNet": "jaxnets.models.densenet:DenseNet",
}
__getattr__ = lazy_module_getattr(__name__, _EXPORTS)

# Names usable as `config.model.name`; each maps to a callable `(**kwargs, rngs) -> Module`.
MODELS = Registry("model", {
    "mlp": "jaxnets.models.cnn:MLP",
    "cnn": "jaxnets.models.cnn:CNN",
    "resnet": "jaxnets.models.resnet:ResNet",
    "plainnet": "jaxnets.models.resnet:PlainNet",
    "preact_resnet": "jaxnets.models.resnet:PreActResNet",
    "densenet": "jaxnets.models.densenet:DenseNet",
})
