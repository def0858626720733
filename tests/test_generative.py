"""AE / VAE / GAN / U-Net modules against float64 references and closed forms."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from scipy import stats

from jaxnets.models import autoencoder as ae
from jaxnets.models.unet import PromptTokenizer, UNet, sinusoidal_time_embedding


def _init(ctor):
    """Build a module inside one jit, as the trainer does (eager init compiles each initialiser)."""
    graphdef = nnx.split(nnx.eval_shape(ctor))[0]
    return nnx.merge(graphdef, jax.jit(lambda: nnx.split(ctor())[1])())


def _kl_full_covariance(m0, S0, m1, S1):
    """KL(N(m0, S0) || N(m1, S1)) for full covariance matrices (float64 reference)."""
    k = len(m0)
    S1_inv = np.linalg.inv(S1)
    d = m1 - m0
    return 0.5 * (np.trace(S1_inv @ S0) + d @ S1_inv @ d - k
                  + np.linalg.slogdet(S1)[1] - np.linalg.slogdet(S0)[1])


def test_vae_kl_matches_the_multivariate_gaussian_closed_form():
    rng = np.random.default_rng(0)
    mq, lq, mp, lp = (rng.normal(size=(4, 5)) for _ in range(4))
    got_std = ae.gaussian_kl(jnp.asarray(mq), jnp.asarray(lq))
    got_gen = ae.diagonal_gaussian_kl(*map(jnp.asarray, (mq, lq, mp, lp)))
    for b in range(4):
        ref_std = _kl_full_covariance(mq[b], np.diag(np.exp(lq[b])), np.zeros(5), np.eye(5))
        ref_gen = _kl_full_covariance(mq[b], np.diag(np.exp(lq[b])), mp[b], np.diag(np.exp(lp[b])))
        np.testing.assert_allclose(got_std[b], ref_std, rtol=1e-5)
        np.testing.assert_allclose(got_gen[b], ref_gen, rtol=1e-5)
    # KL(q || q) = 0, up to float32 rounding of five O(1) terms
    np.testing.assert_allclose(ae.diagonal_gaussian_kl(mq, lq, mq, lq), 0.0, atol=1e-6)


def test_likelihoods_match_scipy_in_nats():
    rng = np.random.default_rng(1)
    x = (rng.uniform(size=(3, 4, 4, 1)) > 0.5).astype(np.float64)
    logits = rng.normal(scale=3.0, size=x.shape)
    ref_b = stats.bernoulli.logpmf(x, 1 / (1 + np.exp(-logits))).reshape(3, -1).sum(-1)
    np.testing.assert_allclose(ae.bernoulli_log_likelihood(jnp.asarray(logits, jnp.float32),
                                                           jnp.asarray(x, jnp.float32)), ref_b, rtol=1e-5)
    xg, mean = rng.uniform(size=(3, 4, 4, 1)), rng.uniform(size=(3, 4, 4, 1))
    ref_g = stats.norm.logpdf(xg, mean, np.exp(-0.7)).reshape(3, -1).sum(-1)
    np.testing.assert_allclose(ae.gaussian_log_likelihood(jnp.asarray(mean, jnp.float32), -0.7,
                                                          jnp.asarray(xg, jnp.float32)), ref_g, rtol=1e-5)


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_vae_elbo_is_reconstruction_minus_kl_with_reparameterised_z(likelihood):
    vae = _init(lambda: ae.VAE((8, 8, 1), latent_dim=3, arch="mlp", likelihood=likelihood,
                               hidden=(16,), rngs=nnx.Rngs(0)))
    x = jnp.asarray((np.random.default_rng(2).uniform(size=(5, 8, 8, 1)) > 0.5), jnp.float32)
    terms = vae.elbo_terms(x, nnx.Rngs(latent=7))
    mean, logvar = (np.asarray(a, np.float64) for a in vae.encode(x))
    z = mean + np.exp(0.5 * logvar) * np.asarray(jax.random.normal(nnx.Rngs(latent=7).latent(), mean.shape))
    decoded = np.asarray(vae.decode(jnp.asarray(z, jnp.float32)), np.float64)
    if likelihood == "bernoulli":
        ref_ll = stats.bernoulli.logpmf(np.asarray(x), 1 / (1 + np.exp(-decoded))).reshape(5, -1).sum(-1)
    else:
        ref_ll = stats.norm.logpdf(np.asarray(x), decoded, 1.0).reshape(5, -1).sum(-1)  # log_scale = 0
    ref_kl = 0.5 * np.sum(np.exp(logvar) + mean**2 - 1 - logvar, -1)
    np.testing.assert_allclose(terms["log_px_z"], ref_ll, rtol=1e-4)
    np.testing.assert_allclose(terms["kl"], ref_kl, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(terms["elbo"], ref_ll - ref_kl, rtol=1e-4)
    # the reparameterised sample carries gradients to the encoder's variance
    grads = nnx.jit(nnx.grad(lambda m: -m.elbo_terms(x, nnx.Rngs(latent=7))["elbo"].mean()))(vae)
    assert float(jnp.abs(grads["encoder"]["out"]["kernel"][...]).sum()) > 0


@pytest.mark.parametrize("arch", ["mlp", "conv"])
def test_autoencoders_map_images_to_latents_and_back(arch):
    x = jnp.full((2, 28, 28, 1), 0.5)
    model = _init(lambda: ae.AutoEncoder(latent_dim=4, arch=arch, rngs=nnx.Rngs(0)))
    vae = _init(lambda: ae.VAE(latent_dim=2, arch=arch, rngs=nnx.Rngs(0)))
    code, out, vae_out = nnx.jit(lambda m, v: (m.encode(x), m(x), v(x)))(model, vae)
    assert code.shape == (2, 4) and out.shape == x.shape
    assert float(out.min()) >= 0 and float(out.max()) <= 1
    assert vae_out["decoded"].shape == x.shape and vae_out["mean"].shape == (2, 2)


def test_sinusoidal_time_embedding_matches_numpy():
    t = np.array([0, 3, 150])
    freqs = 10000.0 ** (-np.arange(4) / 4)
    ref = np.concatenate([np.sin(t[:, None] * freqs), np.cos(t[:, None] * freqs)], -1)
    np.testing.assert_allclose(sinusoidal_time_embedding(jnp.asarray(t), 8), ref, atol=2e-5)


def test_prompt_tokenizer_and_text_conditioned_unet():
    tok = PromptTokenizer()
    ids = tok.encode(["a handwritten seven", "A Handwritten  SEVEN!", "qwerty 7", ""])
    assert (ids[0] == ids[1]).all() and ids[0, 0] == 1 and ids[2, 1] == 2     # [CLS], [UNK]
    assert (ids[3, 1:] == 0).all()                                            # empty = null prompt
    unet = _init(lambda: UNet((8, 8, 1), channels=8, channel_mults=(1, 2), attention=False, conditioning="text",
                              text_dim=16, text_layers=1, rngs=nnx.Rngs(0)))
    # randomise the zero-initialised convs so that the condition is visible in eps at init
    for i, (_, node) in enumerate(nnx.iter_graph(unet)):
        if isinstance(node, nnx.Conv) and not node.kernel[...].any():
            node.kernel[...] = 0.1 * jax.random.normal(jax.random.key(i), node.kernel.shape)
    x = jnp.broadcast_to(jax.random.normal(jax.random.key(1), (1, 8, 8, 1)), (5, 8, 8, 1))
    cond = jnp.concatenate([jnp.asarray(ids), unet.null_condition()[None]])
    eps = nnx.jit(lambda m, x, c: m(x, jnp.ones(5, jnp.int32), c))(unet, x, cond)  # one compile
    assert eps.shape == x.shape and bool(jnp.isfinite(eps).all())
    np.testing.assert_allclose(eps[0], eps[1], atol=1e-5)     # same prompt after normalisation
    np.testing.assert_allclose(eps[4], eps[3], atol=1e-6)     # null_condition() is the empty prompt
    assert float(jnp.abs(eps[0] - eps[2]).max()) > 1e-3       # a different prompt changes eps
    assert float(jnp.abs(eps[0] - eps[3]).max()) > 1e-3


def test_patch_folding_matches_a_pixel_loop_and_the_unet_keeps_the_image_shape():
    from jaxnets.models.unet import _fold, _unfold

    x = np.random.default_rng(0).normal(size=(2, 6, 4, 3))
    ref = np.zeros((2, 3, 2, 12))
    for i in range(6):
        for j in range(4):      # pixel (i, j) -> patch (i // 2, j // 2), channel block (i % 2, j % 2)
            ref[:, i // 2, j // 2, ((i % 2) * 2 + j % 2) * 3:((i % 2) * 2 + j % 2 + 1) * 3] = x[:, i, j]
    np.testing.assert_array_equal(_fold(x, 2), ref)
    np.testing.assert_array_equal(_unfold(_fold(x, 2), 2), x)
    # shapes only (abstract evaluation, no compile): the network sees 4x4 pixels of 4 channels
    unet = nnx.eval_shape(lambda: UNet((8, 8, 1), channels=8, channel_mults=(1, 2), attention=False,
                                       patch_size=2, rngs=nnx.Rngs(0)))
    assert unet.conv_in.kernel.shape == (3, 3, 4, 8) and unet.conv_out.kernel.shape == (3, 3, 8, 4)
    graphdef, params = nnx.split(unet)
    eps = jax.eval_shape(lambda p, x: nnx.merge(graphdef, p)(x, jnp.ones(2, jnp.int32)), params,
                         jax.ShapeDtypeStruct((2, 8, 8, 1), jnp.float32))
    assert eps.shape == (2, 8, 8, 1)
    with pytest.raises(ValueError, match="patch size 2"):
        UNet((6, 6, 1), channels=8, channel_mults=(1, 2), patch_size=2, rngs=nnx.Rngs(0))


def test_frechet_distance_matches_a_symmetric_eigenvalue_formula():
    from jaxnets.images import class_coverage, frechet_distance

    rng = np.random.default_rng(3)
    a = rng.normal(size=(400, 6)) @ rng.normal(size=(6, 6))
    b = rng.normal(size=(300, 6)) * 2.0 + 1.0
    ma, mb, sa, sb = a.mean(0), b.mean(0), np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    w, v = np.linalg.eigh(sa)
    root_a = v @ np.diag(np.sqrt(w)) @ v.T
    # Tr (Sa Sb)^1/2 = sum of square roots of the eigenvalues of Sa^1/2 Sb Sa^1/2 (symmetric PSD)
    tr_root = np.sqrt(np.clip(np.linalg.eigvalsh(root_a @ sb @ root_a), 0, None)).sum()
    ref = np.sum((ma - mb) ** 2) + np.trace(sa) + np.trace(sb) - 2 * tr_root
    np.testing.assert_allclose(frechet_distance(a, b), ref, rtol=1e-8)
    assert abs(frechet_distance(a, a)) < 1e-6
    assert class_coverage(np.arange(100) % 10) == 1.0 and class_coverage(np.zeros(50, int)) == 0.1


def _gan_task():
    from jaxnets.data import Dataset
    from jaxnets.tasks.gan import GANTask
    from jaxnets.train.defaults import base_config
    from jaxnets.train.optim import OptimizerFactory

    c = base_config()
    c.task = "gan"
    c.model = {"name": "dcgan_generator", "latent_dim": 8, "channels": 8}
    c.model_d = {"name": "dcgan_discriminator", "channels": 8, "dropout": 0.3}
    c.optim.name, c.optim.lr, c.optim.b1 = "adam", 2e-3, 0.5
    c.optim_d = c.optim.copy_and_resolve_references()
    images = np.random.default_rng(0).integers(0, 256, (16, 8, 8, 1), dtype=np.uint8)
    data = Dataset("toy", {"train": {"image": images, "label": np.zeros(16, np.int32)}},
                   {"image_shape": (8, 8, 1), "num_classes": 10})
    task = GANTask(c, data)
    # initialise inside one jit, as the trainer does (eager init compiles every initialiser)
    build = lambda: task.build(nnx.Rngs(0), OptimizerFactory(c))
    graphdef = nnx.split(nnx.eval_shape(build))[0]
    return task, nnx.merge(graphdef, jax.jit(lambda: nnx.split(build())[1])()), images


def test_gan_step_moves_d_then_g_loss_down_each_optimizer_on_its_own_network():
    from jaxnets.tasks.gan import discriminator_loss, generator_loss

    task, state, images = _gan_task()
    x = task.real_images({"image": jnp.asarray(images)})
    z = jax.random.normal(jax.random.key(1), (16, 8))
    d_rng, g_rng = jax.random.key(2), jax.random.key(3)
    params = lambda m: jax.tree.map(jnp.copy, nnx.state(m, nnx.Param))

    @nnx.jit
    def phases(state):   # each loss before and after one update of its network, same noise
        g0, d0 = params(state.generator), params(state.discriminator)
        d_before = task.d_step(state, x, z, d_rng)
        d_after = task.d_step(state, x, z, d_rng)    # reports the loss after update 1
        g1, d1 = params(state.generator), params(state.discriminator)
        g_before = task.g_step(state, z, g_rng)
        g_after = task.g_step(state, z, g_rng)
        return d_before, d_after, g_before, g_after, (g0, d0, g1, d1), state.generator(z)

    d_before, d_after, g_before, g_after, snaps, fake = phases(state)
    assert fake.shape == (16, 8, 8, 1) and float(jnp.abs(fake).max()) <= 1.0    # tanh output
    g0, d0, g1, d1 = ([np.asarray(a) for a in jax.tree.leaves(s)] for s in snaps)
    g2, d2 = ([np.asarray(a) for a in jax.tree.leaves(nnx.state(m, nnx.Param))]
              for m in (state.generator, state.discriminator))
    same = lambda a, b: all(np.array_equal(u, v) for u, v in zip(a, b))
    assert float(d_after["d_loss"]) < float(d_before["d_loss"])
    assert float(d_after["d_real"]) > float(d_before["d_real"])     # D(x) pushed towards 1...
    assert float(d_after["d_fake"]) < float(d_before["d_fake"])     # ...and D(G(z)) towards 0
    assert same(g1, g0) and not same(d1, d0)                        # the D optimizer left G alone
    assert float(g_after["g_loss"]) < float(g_before["g_loss"])     # -log D(G(z)) went down
    assert same(d2, d1) and not same(g2, g1)                        # the G optimizer left D alone

    # the losses are the stated objectives, checked in float64 from logits l
    l_r, l_f = np.random.default_rng(4).normal(size=(2, 32))
    log_d = lambda v: -np.log1p(np.exp(-v))          # log D = log sigmoid(l)
    log_1m_d = lambda v: -np.log1p(np.exp(v))        # log(1 - D)
    np.testing.assert_allclose(discriminator_loss(jnp.asarray(l_r), jnp.asarray(l_f)),
                               -np.mean(log_d(l_r)) - np.mean(log_1m_d(l_f)), rtol=1e-5)
    np.testing.assert_allclose(generator_loss(jnp.asarray(l_f), "non_saturating"), -np.mean(log_d(l_f)), rtol=1e-5)
    np.testing.assert_allclose(generator_loss(jnp.asarray(l_f), "minimax"), np.mean(log_1m_d(l_f)), rtol=1e-5)
