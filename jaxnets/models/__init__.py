"""Model families: one file each, a Flax NNX module plus a small factory, no training code.

Call convention for every model: `model(x, *, train=False, rngs=None)`; `train` switches
dropout and batch-norm statistics, `rngs` (an `nnx.Rngs` with a 'dropout' stream) supplies
the randomness of a training call. Import a class directly: `from jaxnets.models import ResNet`.
"""
import inspect
from typing import Any

from jaxnets.errors import UserError
from jaxnets.registry import Registry, lazy_module_getattr

# Public classes, imported on first attribute access.
_EXPORTS = {
    "MLP": "jaxnets.models.cnn:MLP",
    "CNN": "jaxnets.models.cnn:CNN",
    "ResNet": "jaxnets.models.resnet:ResNet",
    "PlainNet": "jaxnets.models.resnet:PlainNet",
    "PreActResNet": "jaxnets.models.resnet:PreActResNet",
    "DenseNet": "jaxnets.models.densenet:DenseNet",
    "AutoEncoder": "jaxnets.models.autoencoder:AutoEncoder",
    "VAE": "jaxnets.models.autoencoder:VAE",
    "DCGANGenerator": "jaxnets.models.dcgan:DCGANGenerator",
    "DCGANDiscriminator": "jaxnets.models.dcgan:DCGANDiscriminator",
    "UNet": "jaxnets.models.unet:UNet",
    "RNNLanguageModel": "jaxnets.models.rnn:RNNLanguageModel",
    "RNNClassifier": "jaxnets.models.rnn:RNNClassifier",
    "RNNTagger": "jaxnets.models.rnn:RNNTagger",
    "Seq2SeqLSTM": "jaxnets.models.seq2seq_lstm:Seq2SeqLSTM",
    "Transformer": "jaxnets.models.transformer:Transformer",
    "TransformerLM": "jaxnets.models.transformer:TransformerLM",
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
    "autoencoder": "jaxnets.models.autoencoder:AutoEncoder",
    "vae": "jaxnets.models.autoencoder:VAE",
    "dcgan_generator": "jaxnets.models.dcgan:DCGANGenerator",
    "dcgan_discriminator": "jaxnets.models.dcgan:DCGANDiscriminator",
    "unet": "jaxnets.models.unet:UNet",
    "rnn_lm": "jaxnets.models.rnn:RNNLanguageModel",
    "rnn_classifier": "jaxnets.models.rnn:RNNClassifier",
    "rnn_tagger": "jaxnets.models.rnn:RNNTagger",
    "seq2seq_lstm": "jaxnets.models.seq2seq_lstm:Seq2SeqLSTM",
    "transformer": "jaxnets.models.transformer:Transformer",
    "transformer_lm": "jaxnets.models.transformer:TransformerLM",
})


def constructor_keywords(name: str) -> dict[str, inspect.Parameter]:
    """The keywords model `name` accepts (its constructor's signature, less self and rngs)."""
    cls = MODELS.get(name)
    target = cls.__init__ if isinstance(cls, type) else cls
    return {k: p for k, p in inspect.signature(target).parameters.items() if k not in ("self", "rngs")}


def model_options(name: str) -> dict[str, Any]:
    """Model `name`'s declared options and their defaults: its constructor keywords, the one
    place they are declared (None for a keyword without a default, which the task supplies)."""
    return {k: (None if p.default is inspect.Parameter.empty else p.default)
            for k, p in constructor_keywords(name).items() if p.kind is not inspect.Parameter.VAR_KEYWORD}


def build_model(model_config, rngs, **defaults):
    """Instantiate `model_config.name` with its keywords; `defaults` (e.g. num_classes,
    in_channels, dtype from the task) fill in only the keywords the constructor accepts and
    the config does not set."""
    kwargs = {k: v for k, v in dict(model_config).items() if k != "name"}
    cls = MODELS.get(model_config.name)
    params = constructor_keywords(model_config.name)
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    for key, value in defaults.items():
        if key not in kwargs and (takes_any or key in params):
            kwargs[key] = value
    unknown = [k for k in kwargs if k not in params and not takes_any]
    if unknown:
        raise UserError(f"Model {model_config.name!r} ({cls.__name__}) takes no keyword(s) {unknown}; "
                        f"it accepts {list(params)}.")
    return cls(**kwargs, rngs=rngs)
