"""ResNet / PlainNet / PreActResNet / DenseNet: sizes against the papers, the forward pass against
a float64 NumPy re-implementation, the residual gradient identity, lesion plumbing."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxnets.models import MODELS, DenseNet, PlainNet, PreActResNet, ResNet
from jaxnets.models.resnet import layer_norms, param_count


def rngs(seed):
    # The 'rbg' key generator compiles its per-shape init kernels far faster than threefry,
    # which dominated this file's runtime on a 2-core CPU.
    return nnx.Rngs(jax.random.key(seed, impl="rbg"))


def count(factory):
    return param_count(nnx.eval_shape(factory))


# He et al. 2016a, Table 6 (option A); torchvision's published counts; Huang et al. 2017 Table 2.
@pytest.mark.parametrize("depth,paper", [(20, 0.27e6), (32, 0.46e6), (44, 0.66e6), (56, 0.85e6),
                                         (110, 1.7e6)])
def test_cifar_param_counts_match_paper(depth, paper):
    n = count(lambda: ResNet(depth, 10, rngs=nnx.Rngs(0)))
    assert abs(n - paper) / paper < 0.03


@pytest.mark.parametrize("depth,exact", [(18, 11_689_512), (34, 21_797_672), (50, 25_557_032)])
def test_imagenet_param_counts_match_torchvision(depth, exact):
    assert count(lambda: ResNet(depth, 1000, form="imagenet", rngs=nnx.Rngs(0))) == exact


def test_densenet_bc_param_count():
    n = count(lambda: DenseNet(100, 10, growth_rate=12, rngs=nnx.Rngs(0)))
    assert abs(n - 0.8e6) / 0.8e6 < 0.05   # paper rounds to 0.8M


def param_paths(model):
    return {path: p.shape for path, p in nnx.to_flat_state(nnx.state(model, nnx.Param))}


@pytest.mark.parametrize("shortcut", ["A", "B"])
def test_plain_is_residual_minus_shortcuts(shortcut):
    res = param_paths(nnx.eval_shape(lambda: ResNet(32, shortcut=shortcut, rngs=nnx.Rngs(0))))
    plain = param_paths(nnx.eval_shape(lambda: PlainNet(32, shortcut=shortcut, rngs=nnx.Rngs(0))))
    extra = {p: s for p, s in res.items() if p not in plain}
    assert all(plain[p] == res[p] for p in plain)
    if shortcut == "A":
        assert not extra
    else:  # exactly the two downsampling blocks carry a 1x1 projection and its BN
        assert {p[1] for p in extra} == {5, 10}
        assert all(p[2] in ("projection", "projection_norm") for p in extra)
    assert MODELS.get("plainnet") is PlainNet and MODELS.get("resnet") is ResNet


# ---------------------------------------------------------------- float64 NumPy reference forward
def np_conv(x, w, stride):
    k = w.shape[0]
    pad = k // 2
    xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    h = (x.shape[1] + 2 * pad - k) // stride + 1
    out = np.zeros((x.shape[0], h, h, w.shape[-1]))
    for i in range(k):
        for j in range(k):
            patch = xp[:, i:i + stride * h:stride, j:j + stride * h:stride, :]
            out += patch @ w[i, j]
    return out


def np_bn(x, bn):
    m, v = np.asarray(bn.mean[...], np.float64), np.asarray(bn.var[...], np.float64)
    g, b = np.asarray(bn.scale[...], np.float64), np.asarray(bn.bias[...], np.float64)
    return (x - m) / np.sqrt(v + 1e-5) * g + b


def np_resnet(model, x, residual):
    """He et al. 2016a post-activation CIFAR net with option-A shortcuts, in float64 NumPy."""
    w = lambda conv: np.asarray(conv.kernel[...], np.float64)
    relu = lambda a: np.maximum(a, 0)
    x = relu(np_bn(np_conv(x, w(model.stem), 1), model.stem_norm))
    for block in model.blocks:
        y = relu(np_bn(np_conv(x, w(block.convs[0]), block.stride), block.norms[0]))
        y = np_bn(np_conv(y, w(block.convs[1]), 1), block.norms[1])
        if residual:
            s = x[:, ::block.stride, ::block.stride, :]
            extra = block.cout - s.shape[-1]
            y = y + np.pad(s, ((0, 0),) * 3 + ((extra // 2, extra - extra // 2),))
        x = relu(y)
    head = model.head
    return x.mean((1, 2)) @ np.asarray(head.kernel[...], np.float64) + np.asarray(head.bias[...])


@pytest.mark.parametrize("residual", [True, False])
def test_forward_matches_numpy_float64(residual):
    model = ResNet(8, 5, residual=residual, width=4, rngs=rngs(1))
    rng = np.random.default_rng(0)
    for _, bn in nnx.iter_graph(model):  # non-trivial running statistics
        if isinstance(bn, nnx.BatchNorm):
            bn.mean[...] = rng.normal(size=bn.mean.shape) * 0.1
            bn.var[...] = rng.uniform(0.5, 2, size=bn.var.shape)
    x = rng.normal(size=(2, 8, 8, 3))
    got = np.asarray(nnx.jit(lambda m, x: m(x))(model, jnp.asarray(x, jnp.float32)))
    np.testing.assert_allclose(got, np_resnet(model, x, residual), rtol=1e-4, atol=1e-4)


def test_lesion_paths_agree_and_layer_paths_ordered():
    model = ResNet(20, width=4, rngs=rngs(0))
    x = jax.random.normal(jax.random.key(0), (2, 8, 8, 3))
    forward = nnx.jit(lambda m, x, skip: m(x, skip_blocks=skip), static_argnums=2)
    by_mask = nnx.jit(lambda m, x, mask: m(x, skip_blocks=mask))
    mask = jnp.zeros(model.num_blocks).at[4].set(1.0)
    np.testing.assert_allclose(forward(model, x, (4,)), by_mask(model, x, mask), atol=1e-5)
    assert not np.allclose(forward(model, x, ()), forward(model, x, (4,)))
    paths = model.layer_paths()
    assert len(paths) == 20 and paths[0][0] == "stem" and paths[-1][0] == "head"
    norms = layer_norms(nnx.state(model, nnx.Param), paths)
    assert norms.shape == (20,) and np.all(norms > 0)


# ---------------------------------------------------------------- residual gradient identity
def test_residual_gradient_identity_numpy_jacobians():
    """x_{i+1} = x_i + tanh(W_i x_i): dL/dx_l = dL/dx_L (I + d(sum_{i>=l} F(x_i))/dx_l), with the
    Jacobian built by hand in float64 NumPy, against jax.grad of the whole stack."""
    rng = np.random.default_rng(0)
    d, depth, l = 6, 8, 2
    ws = [rng.normal(size=(d, d)) / np.sqrt(d) for _ in range(depth)]
    x0, target = rng.normal(size=d), rng.normal(size=d)
    xs = [x0]
    for w in ws:
        xs.append(xs[-1] + np.tanh(w @ xs[-1]))
    dloss_dxL = xs[-1] - target                       # L = |x_L - t|^2 / 2
    dxi_dxl, dsumF_dxl = np.eye(d), np.zeros((d, d))
    for i in range(l, depth):
        dF = (1 - np.tanh(ws[i] @ xs[i]) ** 2)[:, None] * ws[i] @ dxi_dxl
        dsumF_dxl += dF
        dxi_dxl = dxi_dxl + dF
    expected = dloss_dxL @ (np.eye(d) + dsumF_dxl)

    def loss(x_l):
        for w in ws[l:]:
            x_l = x_l + jnp.tanh(jnp.asarray(w, jnp.float32) @ x_l)
        return 0.5 * jnp.sum((x_l - target) ** 2)

    got = jax.grad(loss)(jnp.asarray(xs[l], jnp.float32))
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_residual_gradient_identity_on_preact_blocks():
    """The same identity on real pre-activation units (identity shortcuts, x_{i+1} = x_i + F)."""
    model = PreActResNet(20, width=4, rngs=rngs(0))
    blocks = list(model.blocks)[:3]                      # stage 1: identity shortcuts only
    x = jax.random.normal(jax.random.key(1), (2, 8, 8, 4))
    target = jax.random.normal(jax.random.key(2), x.shape)

    def run(x):
        fs = []
        for b in blocks:
            y = b(x)
            fs.append(y - x)
            x = y
        return x, sum(fs)

    loss = lambda xL: 0.5 * jnp.sum((xL - target) ** 2)
    @jax.jit
    def both_sides(x):
        direct = jax.grad(lambda x: loss(run(x)[0]))(x)
        (xL, _), vjp = jax.vjp(run, x)
        g = jax.grad(loss)(xL)
        return direct, g + vjp((jnp.zeros_like(xL), g))[0]

    direct, identity = both_sides(x)
    np.testing.assert_allclose(direct, identity, rtol=1e-4, atol=1e-5)

# Lesions of a trained net (residual survives, plain collapses): tests/test_degradation.py.
# The fusion barrier and the folded narrow convolutions: tests/test_conv.py.


# ---------------------------------------------------------------- CPU lowering: fusion barriers
@pytest.mark.parametrize("preact,forward,barriers", [
    (False, "native", 10),   # the stem and the 9 block outputs (residual sums) only
    (False, "xla", 19),      # and the 9 second-convolution inputs, which XLA then reads
    (True, "native", 11),    # the 9 block outputs, and the 2 stride-2 entries (conv + projection)
])
def test_barriers_only_where_xla_reads(monkeypatch, preact, forward, barriers):
    """`materialize` goes in front of convolutions XLA runs and on residual sums, not in front of
    native kernels (which read one buffer anyway); the gradients equal the plain lowering's."""
    import dataclasses

    from jaxnets.models import resnet
    from jaxnets.nn.lowering import PLAIN
    from jaxnets.platform.lowering_rule import lowering_for
    lowering = lowering_for(backend="cpu")
    if forward == "native" and lowering.conv.forward != "native":
        pytest.skip("no native convolution build here")
    lowering = dataclasses.replace(lowering, conv=dataclasses.replace(lowering.conv, forward=forward))
    calls = []
    materialize = resnet.materialize
    monkeypatch.setattr(resnet, "materialize", lambda x: calls.append(x.shape) or materialize(x))
    x = jax.random.normal(jax.random.key(1), (2, 8, 8, 3))
    grads = []
    for low in (lowering, PLAIN):
        model = ResNet(20, 10, shortcut="B", preact=preact, lowering=low, rngs=rngs(0))
        loss = lambda m: jnp.sum(jnp.sin(m(x, train=True)))
        grads.append(jax.tree.leaves(nnx.grad(loss)(model)))
    assert len(calls) == barriers, calls
    for a, b in zip(*grads):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-4, atol=2e-4 * float(jnp.abs(b).max()))
