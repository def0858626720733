"""The long-range seq2seq pieces: the `sequence_copy` task and Seq2SeqLSTM's cell/attention options."""
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxnets.data import load_dataset
from jaxnets.data.synthetic import BOS, EOS
from jaxnets.errors import UserError
from jaxnets.models.seq2seq_lstm import Seq2SeqLSTM


@pytest.mark.parametrize("reverse", [False, True])
def test_sequence_copy_targets_are_the_source_copied_or_reversed(reverse):
    ds = load_dataset("sequence_copy", length=7, num_train=300, num_test=50, reverse=reverse, seed=3)
    vocab = ds.info["vocab"]
    for split, n in (("train", 300), ("test", 50)):
        src, tgt = ds.splits[split]["source"], ds.splits[split]["target"]
        assert src.shape == (n, 7) and tgt.shape == (n, 9)
        assert (tgt[:, 0] == BOS).all() and (tgt[:, -1] == EOS).all()
        expected = src[:, ::-1] if reverse else src
        np.testing.assert_array_equal(tgt[:, 1:-1], expected)
        assert all(vocab[i] in "abcdefgh" for i in np.unique(src))
    train = {tuple(r) for r in ds.splits["train"]["source"]}
    test = [tuple(r) for r in ds.splits["test"]["source"]]
    assert len(train) == 300 and len(set(test)) == 50 and not train & set(test)   # held out
    with pytest.raises(UserError):
        load_dataset("sequence_copy", length=2, num_train=100, num_test=10)   # 64 strings exist


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("attention", [True, False])
def test_teacher_forced_logits_equal_step_by_step_decoding(cell, attention):
    """The scan over all target steps and one decode_step at a time are the same network."""
    model = Seq2SeqLSTM(12, rngs=nnx.Rngs(0), embed_dim=8, hidden=16, cell=cell, attention=attention)
    rng = np.random.default_rng(0)
    source = jnp.asarray(np.concatenate([rng.integers(3, 12, (3, 5)), np.zeros((3, 2), int)], 1))
    target_in = jnp.asarray(rng.integers(1, 12, (3, 6)))
    full = model(source, target_in)
    state = model.start_decode(source)
    steps = []
    for t in range(target_in.shape[1]):
        logits, state = model.decode_step(state, target_in[:, t])
        steps.append(logits)
    np.testing.assert_allclose(np.stack(steps, 1), full, rtol=1e-5, atol=1e-5)
    if not attention:   # the fixed-size context: no attention parameters at all
        assert not hasattr(model, "attn")
    else:
        memory, mask, _ = model.encode(source)
        w = model.attention_weights(jnp.ones((3, 4, 16)), memory, mask)
        np.testing.assert_allclose(w.sum(-1), 1.0, rtol=1e-6)
        assert float(jnp.abs(w[:, :, 5:]).max()) < 1e-6   # padded source positions get nothing
