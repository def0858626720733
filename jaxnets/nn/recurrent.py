"""Recurrent layers: Elman RNN, LSTM and GRU cells run by ONE scan
(`jaxnets.nn.recurrent_scan`).

Every cell is written as `pointwise(carry, xp, hp, extras) -> (new_carry, y)` where
`xp = x_t @ W_x + b` (the input projection), `hp = h_{t-1} @ W_h` (the fused recurrent
matmul of all gates) and `extras` are any further recurrent parameters the cell needs.
`recurrent_scan` runs such a cell over time (hoisted input projection, one fused recurrent
matmul per step, hand-written backward, padding that changes neither valid outputs nor the
final state); see `jaxnets/nn/recurrent_scan.py` for how and why.

Carries are tuples with `h` first: `(h,)` for SimpleRNN and GRU, `(h, c)` for LSTM.
Layers take batch-major inputs `[B, T, D]` (or `[T, B, D]` with `time_major=True`) and
return `(outputs, final_state)`.
"""
from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import nnx

from jaxnets.kernels import gru_recurrence, lstm_recurrence
from jaxnets.nn.layers import Param
from jaxnets.nn.lowering import PLAIN, Lowering
from jaxnets.parallel.sharding import constrain
from jaxnets.nn.recurrent_scan import DEFAULT_UNROLL, additive, project, recurrent_scan, runs_natively

Carry = tuple

# ----------------------------------------------------------------------------- cells' maths


def elman_pointwise(carry, xp, hp, extras, *, activation=jnp.tanh):
    """h_t = act(W_x x_t + W_h h_{t-1} + b)."""
    h = activation(xp + hp)
    return (h,), h


@additive
@runs_natively(lstm_recurrence)
def lstm_pointwise(carry, xp, hp, extras):
    """The course's LSTM, gates in the order (i, f, C~, o), same as PyTorch. On CPU the whole
    recurrence runs in a native kernel (`jaxnets.kernels.lstm_recurrence`, the same maths)."""
    _, c = carry
    i, f, g, o = jnp.split(xp + hp, 4, axis=-1)
    c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
    h = jax.nn.sigmoid(o) * jnp.tanh(c)
    return (h, c), h


def gru_pointwise(carry, xp, hp, extras, *, reset_after):
    """GRU with gates (r, z, n) and the course's update h_t = (1 - z) h_{t-1} + z h~_t.

    reset_after=False (the course): h~ = tanh(W_xn x + W_hn (r * h) + b_n); `hp` holds
    only the r, z columns and `extras = (W_hn,)`. reset_after=True (cuDNN/Keras/PyTorch):
    h~ = tanh(W_xn x + b_n + r * (W_hn h + b_hn)); `hp` holds all three, `extras = (b_hn,)`.
    Note z here is 1 - z of PyTorch/Keras, which write h_t = z h_{t-1} + (1 - z) h~_t.
    """
    (h,) = carry
    xr, xz, xn = jnp.split(xp, 3, axis=-1)
    if reset_after:
        hr, hz, hn = jnp.split(hp, 3, axis=-1)
        (b_hn,) = extras
        r = jax.nn.sigmoid(xr + hr)
        n = jnp.tanh(xn + r * (hn + b_hn))
    else:
        hr, hz = jnp.split(hp, 2, axis=-1)
        (w_hn,) = extras
        r = jax.nn.sigmoid(xr + hr)
        n = jnp.tanh(xn + (r * h) @ w_hn)
    z = jax.nn.sigmoid(xz + hz)
    h = h + z * (n - h)
    return (h,), h


# ----------------------------------------------------------------------------- cell modules


class RecurrentCell(nnx.Module):
    """Parameters of one cell: fused kernels `input_kernel [D, G*H]`, `recurrent_kernel
    [H, G*H]`, `bias [G*H]`. Subclasses set `num_gates`, `num_carries` and `pointwise`."""

    num_gates = 1
    num_carries = 1

    def __init__(self, in_features: int, hidden_features: int, *, rngs: nnx.Rngs,
                 dtype: Any = None, param_dtype: Any = jnp.float32,
                 kernel_init=nnx.initializers.glorot_uniform(),
                 recurrent_kernel_init=nnx.initializers.orthogonal(),
                 bias_init=nnx.initializers.zeros_init(), recurrent_gain: float = 1.0):
        # recurrent_gain scales W_h at init: > 1 with a non-saturating activation gives the
        # exploding-gradient regime (benchmarks/long_memory.py shows clipping taming it).
        self.in_features, self.hidden_features = in_features, hidden_features
        self.dtype, self.param_dtype = dtype, param_dtype
        gh = self.num_gates * hidden_features
        # FSDP splits the input and hidden widths; the fused gate axis stays whole, since
        # splitting it over devices would separate a unit's i/f/g/o gates.
        self.input_kernel = Param(kernel_init(rngs.params(), (in_features, gh), param_dtype),
                                  ("embed", None))
        self.recurrent_kernel = Param(
            recurrent_gain * recurrent_kernel_init(rngs.params(), (hidden_features, gh), param_dtype),
            ("embed", None))
        self.bias = Param(bias_init(rngs.params(), (gh,), param_dtype), (None,))

    def _cast(self, a):
        return a if self.dtype is None else a.astype(self.dtype)

    def scan_params(self):
        """(W_x, b, W_h, extras) in the compute dtype, as `recurrent_scan` wants them.

        Gathered whole here (under FSDP), once per call: the scan reads W_h at every time
        step, and a split W_h would be all-gathered inside the loop."""
        whole = lambda a: constrain(self._cast(a), (None,) * a.ndim)
        return (whole(self.input_kernel[...]), whole(self.bias[...]),
                whole(self.recurrent_kernel[...]), ())

    @property
    def pointwise(self) -> Callable:
        raise NotImplementedError

    def initial_state(self, batch_size: int, dtype=None) -> Carry:
        dtype = dtype or self.dtype or self.param_dtype
        return tuple(jnp.zeros((batch_size, self.hidden_features), dtype)
                     for _ in range(self.num_carries))

    def __call__(self, carry: Carry, x: jax.Array) -> tuple[Carry, jax.Array]:
        """One step (decoders use this): x [B, D] -> (new_carry, h)."""
        w_x, b, w_h, extras = self.scan_params()
        x = self._cast(x)
        return self.pointwise(carry, x @ w_x + b, carry[0] @ w_h, extras)


ACTIVATIONS = {"tanh": jnp.tanh, "relu": jax.nn.relu, "linear": lambda a: a}


class SimpleRNNCell(RecurrentCell):
    """Elman RNN: h_t = act(W_x x_t + W_h h_{t-1} + b); act a callable or 'tanh' | 'relu' | 'linear'."""

    def __init__(self, in_features, hidden_features, *, activation="tanh", **kw):
        self.activation = ACTIVATIONS[activation] if isinstance(activation, str) else activation
        super().__init__(in_features, hidden_features, **kw)

    @property
    def pointwise(self):
        return additive(functools.partial(elman_pointwise, activation=self.activation))


class LSTMCell(RecurrentCell):
    """LSTM (course equations, gate order i, f, C~, o).

    `forget_bias` initialises b_f: a number is added to it (1.0 by default, as Jozefowicz et
    al. 2015 recommend, so memories start remembered); "chrono" is the chrono initialisation
    of Tallec & Ollivier 2018, which needs `chrono_max` (T_max, the longest dependency the
    task has, in steps): b_f = log(u), u ~ U(1, T_max - 1) drawn per unit, and b_i = -b_f,
    so unit k starts holding its memory for ~u_k steps while writing little; characteristic
    times spread up to T_max. The other gates keep `bias_init`."""

    num_gates, num_carries = 4, 2

    def __init__(self, in_features, hidden_features, *, forget_bias: float | str = 1.0,
                 chrono_max: float | None = None, rngs: nnx.Rngs, **kw):
        super().__init__(in_features, hidden_features, rngs=rngs, **kw)
        h = hidden_features
        if forget_bias == "chrono":
            if chrono_max is None or chrono_max <= 2:
                raise ValueError(f"forget_bias='chrono' needs chrono_max > 2 (T_max in steps), got {chrono_max}")
            u = jax.random.uniform(rngs.params(), (h,), self.param_dtype, 1.0, chrono_max - 1.0)
            b_f = jnp.log(u)
            self.bias[...] = self.bias[...].at[:h].set(-b_f).at[h:2 * h].set(b_f)
        elif isinstance(forget_bias, str):
            raise ValueError(f"forget_bias is a number or 'chrono', got {forget_bias!r}")
        elif chrono_max is not None:
            raise ValueError("chrono_max is used only with forget_bias='chrono'")
        else:
            self.bias[...] = self.bias[...].at[h:2 * h].add(forget_bias)

    @property
    def pointwise(self):
        return lstm_pointwise


class GRUCell(RecurrentCell):
    """GRU, gates (r, z, n). `reset_after=False`: the course's formulation (reset applied to
    h before the candidate's matmul, so that matmul stays a second one inside the loop);
    `reset_after=True`: the cuDNN/Keras/PyTorch variant (all three recurrent matmuls fused,
    plus a recurrent candidate bias `recurrent_bias`)."""

    num_gates = 3

    def __init__(self, in_features, hidden_features, *, reset_after: bool = True, **kw):
        self.reset_after = reset_after
        super().__init__(in_features, hidden_features, **kw)
        if reset_after:
            self.recurrent_bias = Param(jnp.zeros((hidden_features,), self.param_dtype), (None,))

    def scan_params(self):
        w_x, b, w_h, _ = super().scan_params()
        if self.reset_after:
            return w_x, b, w_h, (self._cast(self.recurrent_bias[...]),)
        h2 = 2 * self.hidden_features
        return w_x, b, w_h[:, :h2], (w_h[:, h2:],)

    @property
    def pointwise(self):
        pointwise = functools.partial(gru_pointwise, reset_after=self.reset_after)
        # On CPU the cuDNN/PyTorch variant's whole recurrence runs in a native kernel
        # (`jaxnets.kernels.gru_recurrence`, the same maths); the course's keeps the XLA loop.
        return runs_natively(gru_recurrence)(pointwise) if self.reset_after else pointwise


# ----------------------------------------------------------------------------- layers


def time_mask(lengths, mask, num_steps: int, batch: int):
    """[T, B] float mask from `lengths` [B] or a batch-major `mask` [B, T]; None if neither."""
    if lengths is not None and mask is not None:
        raise ValueError("give lengths or mask, not both")
    if lengths is not None:
        return (jnp.arange(num_steps)[:, None] < jnp.asarray(lengths)[None, :]).astype(jnp.float32)
    if mask is not None:
        return jnp.asarray(mask).T.astype(jnp.float32)
    return None


class RNN(nnx.Module):
    """Runs one cell over a sequence with `recurrent_scan`.

    `rnn(x, lengths=None, mask=None, initial_state=None) -> (outputs, final_state)`;
    x is [B, T, D] (or [T, B, D] if time_major). Outputs at padded steps are zero and the
    final state is the state after each sequence's last valid step (reverse=True: after
    its first step, the scan having run from the end).
    """

    def __init__(self, cell: RecurrentCell, *, unroll: int = DEFAULT_UNROLL, reverse: bool = False,
                 time_major: bool = False, lowering: Lowering = PLAIN):
        self.cell, self.unroll, self.reverse, self.time_major = cell, unroll, reverse, time_major
        self.native_threads = lowering.native_threads   # a native recurrence's threads (CPU)
        # "auto": the cell's native CPU recurrence where it applies; "xla": the XLA loop always
        # (what `jaxnets export` sets, so that the artifact runs without jaxnets' kernels).
        self.implementation = "auto"

    @property
    def out_features(self) -> int:
        return self.cell.hidden_features

    def initial_state(self, batch_size: int) -> Carry:
        return self.cell.initial_state(batch_size)

    def __call__(self, x, *, lengths=None, mask=None, initial_state=None, train=False, rngs=None):
        if not self.time_major:
            x = jnp.swapaxes(x, 0, 1)   # transpose the narrow input, not the 4x wider projection
        num_steps, batch = x.shape[:2]
        w_x, b, w_h, extras = self.cell.scan_params()
        xp = project(self.cell._cast(x), w_x)   # hoisted: one matmul for all steps
        m = time_mask(lengths, mask, num_steps, batch)
        carry0 = tuple(initial_state) if initial_state is not None else self.initial_state(batch)
        carry0 = tuple(c.astype(xp.dtype) for c in carry0)
        ys, carry = recurrent_scan(self.cell.pointwise, self.unroll, self.reverse,
                                   w_h, extras, b, xp, m, carry0, native_threads=self.native_threads,
                                   implementation=self.implementation)
        if not self.time_major:
            ys = jnp.swapaxes(ys, 0, 1)
        return ys, carry


def _layer(cell_cls, in_features, hidden_features, *, unroll, reverse, time_major, lowering, rngs,
           **cell_kw):
    return dict(cell=cell_cls(in_features, hidden_features, rngs=rngs, **cell_kw),
                unroll=unroll, reverse=reverse, time_major=time_major, lowering=lowering)


class SimpleRNN(RNN):
    """Elman RNN layer; cell keywords (activation, dtype, inits) go to SimpleRNNCell."""

    def __init__(self, in_features, hidden_features, *, rngs, unroll=DEFAULT_UNROLL, reverse=False,
                 time_major=False, lowering: Lowering = PLAIN, **cell_kw):
        super().__init__(**_layer(SimpleRNNCell, in_features, hidden_features, unroll=unroll,
                                  reverse=reverse, time_major=time_major, lowering=lowering,
                                  rngs=rngs, **cell_kw))


class LSTM(RNN):
    """LSTM layer; cell keywords (forget_bias (a number or "chrono"), chrono_max, dtype,
    inits) go to LSTMCell."""

    def __init__(self, in_features, hidden_features, *, rngs, unroll=DEFAULT_UNROLL, reverse=False,
                 time_major=False, lowering: Lowering = PLAIN, **cell_kw):
        super().__init__(**_layer(LSTMCell, in_features, hidden_features, unroll=unroll,
                                  reverse=reverse, time_major=time_major, lowering=lowering,
                                  rngs=rngs, **cell_kw))


class GRU(RNN):
    """GRU layer; cell keywords (reset_after, dtype, inits) go to GRUCell."""

    def __init__(self, in_features, hidden_features, *, rngs, unroll=DEFAULT_UNROLL, reverse=False,
                 time_major=False, lowering: Lowering = PLAIN, **cell_kw):
        super().__init__(**_layer(GRUCell, in_features, hidden_features, unroll=unroll,
                                  reverse=reverse, time_major=time_major, lowering=lowering,
                                  rngs=rngs, **cell_kw))


class Bidirectional(nnx.Module):
    """Runs `forward` left to right and `backward` (an RNN built with reverse=True) right to
    left over the valid steps of each sequence; outputs are concatenated on features and the
    state is the pair (forward_state, backward_state)."""

    def __init__(self, forward: RNN, backward: RNN):
        if not backward.reverse or forward.reverse:
            raise ValueError("Bidirectional wants forward.reverse=False and backward.reverse=True")
        self.forward, self.backward = forward, backward

    @property
    def out_features(self) -> int:
        return self.forward.out_features + self.backward.out_features

    def __call__(self, x, *, lengths=None, mask=None, initial_state=None, train=False, rngs=None):
        s_f, s_b = initial_state if initial_state is not None else (None, None)
        y_f, c_f = self.forward(x, lengths=lengths, mask=mask, initial_state=s_f)
        y_b, c_b = self.backward(x, lengths=lengths, mask=mask, initial_state=s_b)
        return jnp.concatenate([y_f, y_b], axis=-1), (c_f, c_b)


CELLS = {"simple": SimpleRNN, "rnn": SimpleRNN, "lstm": LSTM, "gru": GRU}


class StackedRNN(nnx.Module):
    """`num_layers` recurrent layers of kind 'rnn' | 'lstm' | 'gru', optionally bidirectional,
    with dropout between layers (training only). Returns (outputs, [state per layer])."""

    def __init__(self, kind: str, in_features: int, hidden_features: int, *, rngs: nnx.Rngs,
                 num_layers: int = 1, bidirectional: bool = False, dropout: float = 0.0,
                 unroll: int = DEFAULT_UNROLL, time_major: bool = False,
                 lowering: Lowering = PLAIN, **cell_kw):
        layer_cls = CELLS[kind]
        layers = []
        d = in_features
        for _ in range(num_layers):
            make = functools.partial(layer_cls, d, hidden_features, rngs=rngs, unroll=unroll,
                                     time_major=time_major, lowering=lowering, **cell_kw)
            layer = Bidirectional(make(), make(reverse=True)) if bidirectional else make()
            layers.append(layer)
            d = layer.out_features
        self.layers = nnx.List(layers)
        self.out_features = d
        self.dropout = nnx.Dropout(dropout)

    def __call__(self, x, *, lengths=None, mask=None, initial_state=None, train=False, rngs=None):
        states = []
        for k, layer in enumerate(self.layers):
            if k > 0:
                x = self.dropout(x, deterministic=not train, rngs=rngs)
            s0 = None if initial_state is None else initial_state[k]
            x, s = layer(x, lengths=lengths, mask=mask, initial_state=s0)
            states.append(s)
        return x, states
