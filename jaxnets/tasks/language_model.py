"""Next-token language modelling, for any model mapping tokens [B, T] -> logits [B, T, V].

Reads `batch[tokens_key]` (default "tokens"), int [B, T + 1]: the model sees `[:, :-1]` and
is scored on predicting `[:, 1:]`. Nothing here knows the model family: an RNN LM and a
causal Transformer LM plug in alike (`config.model.name`, with `vocab_size` filled in from
`dataset.info`). Metrics: loss (nats per token), `bits_per_token` (= bits per character on
character-level data, also reported as `bits_per_char`) and perplexity. `report()` samples
text from the trained model, starting from a prompt, and writes it to `workdir/samples.txt`.

task_options: tokens_key ("tokens"), sample_prompt ("ROMEO:"), sample_length (300),
sample_temperature (0.8), sample_context (the window fed to the model while sampling;
default the dataset's seq_len).
"""
from __future__ import annotations

import functools
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxnets.errors import UserError
from jaxnets.models.decoding import generate
from jaxnets.models.transformer import training_flops_per_token
from jaxnets.tasks.base import Inference, State, Task
from jaxnets.tasks.common import build_task_model, encode_text

LN2 = math.log(2.0)


class LanguageModelTask(Task):
    options = {"tokens_key": "tokens", "sample_prompt": "ROMEO:", "sample_length": 300,
               "sample_temperature": 0.8, "sample_context": None}   # None: the dataset's seq_len
    entry_points = frozenset({"generate", "export"})

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.tokens_key = self.opts["tokens_key"]
        self.vocab = dataset.info.get("vocab")
        self.vocab_size = dataset.info["vocab_size"]
        self.sample_prompt = self.opts["sample_prompt"]
        self.sample_length = int(self.opts["sample_length"])
        self.sample_temperature = float(self.opts["sample_temperature"])
        self.sample_context = int(self.opts["sample_context"] or dataset.info.get("seq_len", 128))

    def build(self, rngs, make_optimizer):
        model = build_task_model(self.config.model, self.config, rngs, vocab_size=self.vocab_size)
        return State(model=model, opt=make_optimizer(model))

    def _nll(self, model, tokens, *, train=False, rngs=None):
        logits = model(tokens[:, :-1], train=train, rngs=rngs)
        return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), tokens[:, 1:])

    def train_step(self, state, batch, rng):
        tokens = batch[self.tokens_key]

        def loss_fn(model):
            return self._nll(model, tokens, train=True, rngs=nnx.Rngs(dropout=rng)).mean()

        loss, grads = nnx.value_and_grad(loss_fn)(state.model)
        state.opt.update(state.model, grads)
        return {"loss": loss, "bits_per_token": loss / LN2, "grad_norm": optax.tree.norm(grads)}

    def throughput(self, state):
        seq_len = self.dataset.info.get("seq_len") or \
            self.dataset.splits[self.config.data.train_split][self.tokens_key].shape[1] - 1
        tokens = self.config.data.batch_size * seq_len
        out = {"tokens": float(tokens)}
        if hasattr(state.model, "init_cache"):    # a Transformer LM (KV cache): count its FLOPs
            out["flops"] = tokens * training_flops_per_token(state.model, seq_len)
        return out

    def eval_step(self, state, batch):
        nll = self._nll(state.model, batch[self.tokens_key])       # [B, T]
        mask = batch["mask"]
        return {"nll_sum": jnp.sum(nll * mask[:, None]), "tokens": jnp.sum(mask) * nll.shape[1]}

    def summarize(self, sums):
        loss = float(sums["nll_sum"] / sums["tokens"])
        return {"loss": loss, "bits_per_token": loss / LN2, "bits_per_char": loss / LN2,
                "perplexity": math.exp(min(loss, 50.0)), "tokens": float(sums["tokens"])}

    # ------------------------------------------------------------------ sampling
    def sample_tokens(self, model, prompt_ids, length: int, temperature: float, seed: int = 0) -> np.ndarray:
        """`length` tokens sampled after `prompt_ids`, the model seeing at most `sample_context`
        tokens. A model with a KV cache (`init_cache` + `decode_step`) feeds one token per
        step; any other causal model reruns a sliding window (`sample_window`). Both draw
        token i with the i-th of `jax.random.split(key(seed), length)`, so while the text fits
        the context they sample the same tokens."""
        if hasattr(model, "init_cache") and hasattr(model, "decode_step"):
            return sample_cached(model, prompt_ids, length, temperature, self.sample_context, seed)
        return sample_window(model, prompt_ids, length, temperature, self.sample_context, seed)

    def generate(self, state, prompt: str, length: int, temperature: float | None = None, seed: int = 0) -> str:
        """The `length` characters sampled after `prompt` (temperature: the task's by default)."""
        ids = encode_text(self.vocab, prompt)
        if not ids:
            raise UserError("The prompt must not be empty.")
        if length < 1:
            raise UserError(f"The length must be at least 1, got {length}.")
        temperature = self.sample_temperature if temperature is None else temperature
        if temperature <= 0:
            raise UserError(f"The temperature must be positive, got {temperature}.")
        toks = self.sample_tokens(state.model, ids, length, temperature, seed)
        return "".join(self.vocab[int(i)] for i in toks)

    def inference_fn(self, state):
        x = self.example_row(self.tokens_key)[:, :-1]        # the inputs of the next-token targets
        return Inference(self.config.model.name, state.model, lambda m, x: m(x), [(self.tokens_key, x)])

    def report(self, state, workdir):
        if not self.vocab or self.sample_length <= 0:
            return {}
        index = {c: i for i, c in enumerate(self.vocab)}
        prompt = [index[c] for c in self.sample_prompt if c in index] or [0]
        toks = self.sample_tokens(state.model if hasattr(state, "model") else state, prompt,
                                  self.sample_length, self.sample_temperature, self.config.seed)
        text = "".join(self.vocab[i] for i in prompt) + "".join(self.vocab[int(i)] for i in toks)
        with open(os.path.join(workdir, "samples.txt"), "w", encoding="utf-8") as f:
            f.write(text + "\n")
        # The text itself goes to samples.txt: the trainer's metric log takes numbers only.
        return {"sample_chars": float(len(toks))}


def sample_window(model, prompt_ids, length, temperature, context, seed=0) -> np.ndarray:
    """Sampling with a window of `context` tokens: each step runs the model on the window
    (right-aligned once full, so no future token is ever read) and samples the next token."""
    prompt = np.asarray(prompt_ids, np.int32)[-context:]
    window = np.zeros(context, np.int32)
    window[:len(prompt)] = prompt
    graphdef, params = nnx.split(model)
    return np.asarray(_window_loop(graphdef, params, jnp.asarray(window), jnp.int32(len(prompt)),
                                   jax.random.split(jax.random.key(seed), length), temperature))


@functools.partial(jax.jit, static_argnums=(0, 5))
def _window_loop(graphdef, params, window, n, keys, temperature):
    model = nnx.merge(graphdef, params)
    ctx = window.shape[0]

    def step(carry, key):
        window, n = carry   # n valid tokens at the start of `window` (grows, then slides)
        logits = model(window[None], train=False)[0]
        last = jnp.take(logits, jnp.maximum(n - 1, 0), axis=0)
        tok = jax.random.categorical(key, last / temperature).astype(jnp.int32)
        window = jnp.where(n >= ctx, jnp.roll(window, -1).at[-1].set(tok),
                           window.at[jnp.minimum(n, ctx - 1)].set(tok))
        return (window, jnp.minimum(n + 1, ctx)), tok

    return jax.lax.scan(step, (window, n), keys)[1]


def sample_cached(model, prompt_ids, length, temperature, context, seed=0) -> np.ndarray:
    """KV-cached sampling: one token per step into a cache of `context` positions. A full
    cache restarts from the newest context // 2 tokens (positions are baked into the cached
    keys, so the window cannot slide by one); until then the model sees exactly what
    `sample_window` shows it."""
    graphdef, params = nnx.split(model)
    keys = jax.random.split(jax.random.key(seed), length)
    history = list(np.asarray(prompt_ids, np.int32)[-context:])
    out = []
    while len(out) < length:
        prompt = np.asarray(history[-(context // 2):] if out else history, np.int32)
        steps = min(context - len(prompt) + 1, length - len(out))
        toks = _cached_segment(graphdef, params, jnp.asarray(prompt),
                               keys[len(out):len(out) + steps], steps, context, temperature)
        out.extend(np.asarray(toks).tolist())
        history.extend(np.asarray(toks).tolist())
    return np.asarray(out, np.int32)


@functools.partial(jax.jit, static_argnums=(0, 4, 5, 6))
def _cached_segment(graphdef, params, prompt, keys, steps, context, temperature):
    """`steps` tokens after `prompt` from a fresh cache; compiled once per shape and model."""
    model = nnx.merge(graphdef, params)
    return generate(model, model.init_cache(1, context), prompt[None], steps,
                    temperature=temperature, keys=keys)[0]
