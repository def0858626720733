"""Reusable layers: attention (one entry point), recurrent cells + one scan, embeddings."""
from jaxnets.registry import lazy_module_getattr

_EXPORTS = {
    # recurrent.py
    "SimpleRNNCell": "jaxnets.nn.recurrent:SimpleRNNCell",
    "LSTMCell": "jaxnets.nn.recurrent:LSTMCell",
    "GRUCell": "jaxnets.nn.recurrent:GRUCell",
    "RNN": "jaxnets.nn.recurrent:RNN",
    "SimpleRNN": "jaxnets.nn.recurrent:SimpleRNN",
    "LSTM": "jaxnets.nn.recurrent:LSTM",
    "GRU": "jaxnets.nn.recurrent:GRU",
    "Bidirectional": "jaxnets.nn.recurrent:Bidirectional",
    "StackedRNN": "jaxnets.nn.recurrent:StackedRNN",
    # attention.py
    "dot_product_attention": "jaxnets.nn.attention:dot_product_attention",
    "MultiHeadAttention": "jaxnets.nn.attention:MultiHeadAttention",
    # embedding.py
    "TokenEmbedding": "jaxnets.nn.embedding:TokenEmbedding",
    "sinusoidal_positions": "jaxnets.nn.embedding:sinusoidal_positions",
}
__getattr__ = lazy_module_getattr(__name__, _EXPORTS)
