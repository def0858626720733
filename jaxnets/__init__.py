"""jaxnets: advanced neural networks in JAX/Flax NNX, trained by one sharded trainer."""

__version__ = "0.1.0"
