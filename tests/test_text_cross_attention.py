"""Text-to-image through cross-attention: the U-Net attends to the prompt's token states."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxnets import ddpm as dm
from jaxnets.models.unet import CrossAttention2D, PromptTokenizer, UNet


def _unet(text_conditioning):
    net = UNet((8, 8, 1), channels=8, channel_mults=(1, 2), attention=True, conditioning="text",
               text_dim=16, text_layers=1, text_conditioning=text_conditioning, rngs=nnx.Rngs(0))
    # conv_out starts at zero (eps = 0 at init): give it weights so outputs depend on the input.
    net.conv_out.kernel[...] = 0.1 * jax.random.normal(jax.random.key(1), net.conv_out.kernel.shape)
    return net


def test_cross_attention_ignores_padded_token_states():
    block = CrossAttention2D(8, 16, num_heads=2, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(0), (2, 4, 4, 8))
    ctx = jax.random.normal(jax.random.key(1), (2, 6, 16))
    lengths = jnp.array([3, 5])
    junk = ctx.at[0, 3:].set(100.0).at[1, 5:].set(-100.0)   # only the padded rows change
    np.testing.assert_allclose(block(x, ctx, lengths), block(x, junk, lengths), rtol=1e-5, atol=1e-5)
    assert not np.allclose(block(x, ctx, lengths), block(x, ctx.at[0, 0].add(1.0), lengths))


@pytest.mark.slow   # compiles a U-Net forward, CFG and backward: ~30 s of CPU
def test_prompt_reaches_the_cross_attention_unet_only_through_its_token_states():
    net = _unet("cross_attention")
    assert not hasattr(net, "cond_embed") and net.word_embed is None   # no pooled path
    tok = PromptTokenizer()
    x = jax.random.normal(jax.random.key(2), (2, 8, 8, 1))
    t = jnp.array([10, 10])
    seven, three = tok.encode(["a handwritten seven"] * 2), tok.encode(["a handwritten three"] * 2)
    graphdef, state = nnx.split(net)

    @jax.jit   # one compile instead of slow op-by-op dispatch of the U-Net
    def probe(state):
        model = nnx.merge(graphdef, state)
        loss = lambda s: jnp.sum(nnx.merge(graphdef, s)(x, t, jnp.asarray(seven)) ** 2)
        # Classifier-free guidance with the empty prompt as the null condition.
        eps = dm.guided_eps(lambda x, t, c: model(x, t, c), x, t, jnp.asarray(seven),
                            model.null_condition(), 3.0)
        return (eps, model(x, t, jnp.asarray(seven)), model(x, t, jnp.asarray(three)),
                jax.grad(loss)(state))

    eps, eps_seven, eps_three, grads = probe(state)
    grads = nnx.merge(graphdef, grads)
    assert eps.shape == x.shape and np.isfinite(np.asarray(eps)).all()
    assert not np.allclose(eps_seven, eps_three, atol=1e-6)
    norm = lambda tree: float(sum(jnp.sum(g ** 2) for g in jax.tree.leaves(nnx.state(tree))))
    assert norm(grads.cross_mid) > 0 and norm(grads.text_encoder) > 0


def test_pooled_and_cross_attention_share_the_pooled_encoder_output():
    net = _unet("pooled")
    ids = jnp.asarray(PromptTokenizer().encode(["the digit 7", "seven"]))
    np.testing.assert_allclose(net.text_encoder(ids), net.text_encoder.token_states(ids)[:, 0], rtol=1e-6)
