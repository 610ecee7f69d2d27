"""Class-conditional networks and classifier-free guidance through the one sampler loop.

Exact: data from two Gaussian classes with the patches' Π spectrum and known class means; the class-conditional
oracle gives samples whose mean is the class mean, and guidance w > 0 moves them away from the other class.
Cold and scale-space runs check the same plumbing with a predictor whose answer is known in closed form."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import cloudjax as cj
from cloudjax.models import FlexiUNet, UNet, preset

SIZE, BATCH = 8, 256


def _class_means() -> np.ndarray:
    """``(2, H, W, 1)``: a bright disc on dark (class 0) and its negative (class 1), zero mean over both."""
    yy, xx = np.mgrid[:SIZE, :SIZE] - (SIZE - 1) / 2
    disc = np.where(yy**2 + xx**2 < (SIZE / 3) ** 2, 1.0, -1.0)[..., None].astype(np.float32)
    return np.stack([disc, -disc])


def _guided_means(means: np.ndarray, labels: np.ndarray, w: float) -> np.ndarray:
    """What guidance does to an x0 prediction that is the class mean (cond) or the pooled mean (no class)."""
    pooled = means.mean(axis=0)
    return pooled + (1 + w) * (means[labels] - pooled)


def _labels() -> jnp.ndarray:
    return jnp.asarray(np.arange(BATCH) % 2, jnp.int32)


def test_gaussian_oracle_samples_have_the_class_mean_and_guidance_moves_them_away():
    """x0 prediction; cond: E[x0 | x_t, c] of N(μ_c, C) data; no class: the pooled Gaussian N(μ̄, C)."""
    means = _class_means()
    spectrum = 0.05 / (1 + 16 * cj.wavenumbers(SIZE, SIZE) ** 2)  # a smooth, patch-like Π variance
    diffusion = cj.GaussianDiffusion(prediction="x0")
    centred = cj.gaussian_oracle(diffusion, spectrum)

    def denoise(x, t, labels):
        mu = jnp.where(labels[:, None, None, None] < 0, means.mean(axis=0), jnp.asarray(means)[labels])
        alpha = diffusion.alpha_sigma(t)[0][:, None, None, None]
        return mu + centred(x - alpha * mu, t)

    labels = _labels()
    sample = lambda w: np.asarray(  # noqa: E731
        cj.sample(denoise, diffusion, jax.random.key(0), (BATCH, SIZE, SIZE, 1), 50, labels=labels, guidance=w)
    )
    plain = sample(0.0)
    per_pixel_sd = np.sqrt(float(spectrum.mean()))  # Π is orthonormal: the pixel variance is the mean of C
    for c in (0, 1):
        mine = plain[np.asarray(labels) == c]
        assert np.abs(mine.mean(axis=0) - means[c]).max() < 5 * per_pixel_sd / np.sqrt(len(mine))
    # the projection on μ_c − μ_other of a sample's offset from μ_other; μ̄ + (1 + w)(μ_c − μ̄) is (2 + w)/2 times
    # as far from μ_other as μ_c (μ̄ is half-way)
    along = lambda x, c: float(((x[np.asarray(labels) == c] - means[1 - c]) * (means[c] - means[1 - c])).mean())  # noqa: E731
    for w in (1.0, 3.0):
        guided = sample(w)
        for c in (0, 1):
            assert along(guided, c) == pytest.approx((2 + w) / 2 * along(plain, c), rel=0.05)


def test_guidance_is_one_batched_call_per_step_and_w0_is_plain_conditional():
    calls = []

    def denoise(x, t, labels):
        calls.append(x.shape[0])
        return jnp.zeros_like(x) + labels[:, None, None, None].astype(jnp.float32)

    diffusion, shape = cj.GaussianDiffusion(prediction="x0"), (4, SIZE, SIZE, 1)
    labels = jnp.array([0, 1, 2, -1])
    for w, batch in ((0.0, 4), (1.5, 8)):
        calls.clear()
        out = cj.sample(denoise, diffusion, jax.random.key(0), shape, 3, labels=labels, guidance=w)
        assert set(calls) == {batch}  # traced once per program: the batch the network sees
        # x0 = label (cond), −1 (no class): guided x̂0 = −1 + (1 + w)(label + 1), the output at t = 0
        np.testing.assert_allclose(np.asarray(out)[:, 0, 0, 0], -1 + (1 + w) * (np.asarray(labels) + 1), rtol=1e-6)


@pytest.mark.parametrize(
    "bad, match",
    [
        (dict(guidance=1.0), "needs labels"),
        (dict(labels=jnp.zeros(3, jnp.int32)), "labels must be integers of shape"),
        (dict(labels=jnp.zeros(4)), "labels must be integers"),
        (dict(labels=jnp.zeros(4, jnp.int32), guidance=-1.0), "guidance must be >= 0"),
    ],
)
def test_sampler_refuses_bad_labels_and_guidance(bad, match):
    with pytest.raises(ValueError, match=match):
        cj.sample(lambda x, t, **kw: x, cj.GaussianDiffusion(), jax.random.key(0), (4, SIZE, SIZE, 1), 3, **bad)


def test_cold_algorithm2_follows_the_guided_prediction():
    """A predictor that returns the class mean (pooled mean without a class): Algorithm 2 from the blur's mean
    image ends at x_T − D(g, T) + g with g the guided prediction — g itself when x_T is g's mean, as here."""
    means = _class_means() + 0.5  # class means 0.5 ± 1 per pixel: every image's mean is 0.5·(1 + ...)
    blur = cj.GaussianBlur(np.full(6, 2.0), 5)
    process = cj.ColdDiffusion(blur, steps=6)
    labels = _labels()[:8]

    def denoise(x, t, labels):
        return jnp.where(labels[:, None, None, None] < 0, means.mean(axis=0), jnp.asarray(means)[labels])

    for w in (0.0, 2.0):
        g = _guided_means(means, np.asarray(labels), w)
        start = jnp.asarray(process.degrade(jnp.asarray(g), jnp.full((8,), 6)))
        out = cj.sample(
            denoise, process, jax.random.key(0), start.shape, 6, "cold", init_noise=start, labels=labels, guidance=w
        )
        np.testing.assert_allclose(np.asarray(out), g, atol=1e-5)


def test_scale_space_labels_reach_every_call_including_the_upsampling_ones():
    """x0 = the class mean at the state's resolution (the network's up-sampling calls included): the samples are
    exactly the guided class means at full resolution."""
    means = _class_means()
    process = cj.ScaleSpaceDiffusion(image_size=SIZE, levels=2)
    labels = _labels()[:8]
    seen = []

    def denoise(x, t, labels, upsample=False):
        seen.append(upsample)
        size = x.shape[1] * (2 if upsample else 1)
        mu = jnp.where(labels[:, None, None, None] < 0, means.mean(axis=0), jnp.asarray(means)[labels])
        return jax.image.resize(mu, (x.shape[0], size, size, 1), "linear")

    for w in (0.0, 1.0):
        out = cj.sample(denoise, process, jax.random.key(1), (8, SIZE, SIZE, 1), 20, labels=labels, guidance=w)
        np.testing.assert_allclose(np.asarray(out), _guided_means(means, np.asarray(labels), w), atol=1e-5)
    assert True in seen and False in seen


@pytest.mark.parametrize("flexi", [False, True])
def test_class_embedding_starts_at_zero_so_an_unconditional_checkpoint_behaves_the_same(flexi):
    config = preset("tiny", num_classes=3)
    build = (lambda c: FlexiUNet(c, SIZE, rngs=nnx.Rngs(0))) if flexi else (lambda c: UNet(c, rngs=nnx.Rngs(0)))
    conditional, plain = build(config), build(preset("tiny"))
    # the unconditional network's parameters are the conditional one's without the class embedding
    graphdef, params = nnx.split(conditional)
    plain_params = nnx.state(plain)
    np.testing.assert_array_equal(np.asarray(params["classes"]["embedding"][...]), 0)
    paths = lambda tree: {jax.tree_util.keystr(k) for k, _ in jax.tree_util.tree_flatten_with_path(tree)[0]}  # noqa: E731
    assert paths(plain_params) == {p for p in paths(params) if not p.startswith("['classes']")}
    nnx.update(conditional, plain_params)
    x = jax.random.normal(jax.random.key(0), (4, SIZE, SIZE, 1))
    t = jnp.linspace(0.1, 0.9, 4)
    reference = plain(x, t)
    for labels in (None, jnp.array([0, 1, 2, -1])):
        np.testing.assert_allclose(np.asarray(conditional(x, t, labels)), np.asarray(reference), atol=1e-6)
    with pytest.raises(ValueError, match="class-conditional network"):
        plain(x, t, jnp.zeros(4, jnp.int32))
    with pytest.raises(ValueError, match="labels must have shape"):
        conditional(x, t, jnp.zeros(3, jnp.int32))


@pytest.mark.parametrize(
    "process",
    [
        cj.GaussianDiffusion(prediction="v"),
        cj.BlurringDiffusion(),
        cj.ColdDiffusion(cj.GaussianBlur(np.full(4, 1.0), 3), steps=4),
        cj.ScaleSpaceDiffusion(image_size=SIZE, levels=2),
    ],
    ids=lambda p: type(p).__name__,
)
def test_every_loss_passes_the_labels_to_the_network(process):
    seen = []

    def apply_fn(x, t, labels=None, **kw):
        seen.append(labels)
        return (
            jnp.zeros_like(x) if not kw.get("upsample") else jax.image.resize(x, (x.shape[0], SIZE, SIZE, 1), "linear")
        )

    x0 = jax.random.normal(jax.random.key(0), (4, SIZE, SIZE, 1))
    labels = jnp.array([0, 1, -1, 1])
    process.loss(apply_fn, jax.random.key(1), x0)
    assert all(s is None for s in seen)
    seen.clear()
    process.loss(apply_fn, jax.random.key(1), x0, labels=labels)
    assert seen and all(s is labels for s in seen)


@pytest.mark.parametrize("label_dropout, trained_rows", [(0.0, {0, 2}), (1.0, {3})])
def test_train_step_drops_labels_to_no_class_with_the_given_probability(label_dropout, trained_rows):
    """One step on a batch of classes 0 and 2 (of 3): the class embedding's rows that receive a gradient are those
    of the batch's classes, or only the "no class" row when every label is dropped."""
    import optax

    from cloudjax.train import make_train_step
    from cloudjax.train.state import TrainState

    net = UNet(preset("tiny", num_classes=3), rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(net)
    optimizer = optax.sgd(0.1)
    ema, key_data = jax.tree.map(jnp.copy, params), jax.random.key_data(jax.random.key(0))
    state = TrainState(params, optimizer.init(params), ema, jnp.zeros((), jnp.int32), key_data)
    step = make_train_step(graphdef, cj.GaussianDiffusion(), optimizer, ema_decay=0.9, label_dropout=label_dropout)
    images = jax.random.normal(jax.random.key(1), (4, SIZE, SIZE, 1))
    before = np.asarray(params["classes"]["embedding"][...]).copy()
    for i in range(3):  # the output and the residual convolutions start at zero: step 3 reaches the embedding
        state, metrics = step(state, (images, jnp.array([0, 2, 2, 0])), jax.random.key(i))
    changed = np.abs(np.asarray(state.params["classes"]["embedding"][...]) - before).max(axis=1) > 0
    assert set(np.flatnonzero(changed)) == trained_rows and np.isfinite(float(metrics["loss"]))
