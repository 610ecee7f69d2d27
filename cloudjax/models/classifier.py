"""The small CNN classifier whose penultimate features give the "classifier Fréchet distance" of
:mod:`cloudjax.metrics` on labelled data: trained by cloudjax on the data's own labels, saved as one ``.npz``."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx


@dataclasses.dataclass(frozen=True)
class ClassifierConfig:
    """A small CNN classifier used as a feature extractor.

    Attributes:
      num_classes: number of labels.
      channels: image channels C.
      width: channels of the first convolution (then 2·width, 2·width).
      features: size of the penultimate layer, the features :func:`classifier_features` returns.
      mean, std: input normalisation ``(x − mean) / std``, measured on the training images.
    """

    num_classes: int
    channels: int = 1
    width: int = 32
    features: int = 128
    mean: float = 0.0
    std: float = 1.0


class Classifier(nnx.Module):
    """conv3×3 → ReLU → avg-pool 2 → conv3×3 → ReLU → avg-pool 2 → conv3×3 → ReLU → global mean →
    dense → ReLU (the features) → dense (logits). Any image size; inputs ``(N, H, W, C)``."""

    def __init__(self, config: ClassifierConfig, *, rngs: nnx.Rngs):
        self.config = config
        w = config.width
        self.conv1 = nnx.Conv(config.channels, w, (3, 3), rngs=rngs)
        self.conv2 = nnx.Conv(w, 2 * w, (3, 3), rngs=rngs)
        self.conv3 = nnx.Conv(2 * w, 2 * w, (3, 3), rngs=rngs)
        self.hidden = nnx.Linear(2 * w, config.features, rngs=rngs)
        self.head = nnx.Linear(config.features, config.num_classes, rngs=rngs)

    def features(self, x: jnp.ndarray) -> jnp.ndarray:
        """``(N, features)`` penultimate-layer activations."""
        h = (x - self.config.mean) / self.config.std
        h = nnx.avg_pool(jax.nn.relu(self.conv1(h)), (2, 2), strides=(2, 2))
        h = nnx.avg_pool(jax.nn.relu(self.conv2(h)), (2, 2), strides=(2, 2))
        h = jax.nn.relu(self.conv3(h)).mean(axis=(1, 2))
        return jax.nn.relu(self.hidden(h))

    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        """``(N, num_classes)`` logits."""
        return self.head(self.features(x))


def train_classifier(
    images: np.ndarray,
    labels: np.ndarray,
    *,
    num_classes: int | None = None,
    steps: int = 2000,
    batch_size: int = 128,
    learning_rate: float = 1e-3,
    width: int = 32,
    features: int = 128,
    seed: int = 0,
) -> Classifier:
    """Train a :class:`Classifier` on ``(N, H, W, C)`` images and integer ``(N,)`` labels with AdamW.

    Minibatches are drawn uniformly with replacement (numpy, seeded); ``num_classes`` defaults to
    ``max(labels) + 1``. Use its penultimate layer through :func:`classifier_features`.
    """
    images = np.asarray(images, np.float32)
    labels = np.asarray(labels)
    if images.ndim != 4:
        raise ValueError(f"images must be (N, H, W, C), got shape {images.shape}")
    if labels.shape != (len(images),) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be {len(images)} integers, got {labels.dtype} array of shape {labels.shape}")
    num_classes = int(labels.max()) + 1 if num_classes is None else num_classes
    config = ClassifierConfig(
        num_classes=num_classes,
        channels=images.shape[-1],
        width=width,
        features=features,
        mean=float(images.mean()),
        std=float(images.std() + 1e-8),
    )
    model = Classifier(config, rngs=nnx.Rngs(seed))
    optimizer = nnx.Optimizer(model, optax.adamw(learning_rate), wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer, x, y):
        loss = lambda m: optax.softmax_cross_entropy_with_integer_labels(m(x), y).mean()
        optimizer.update(model, nnx.grad(loss)(model))

    rng = np.random.default_rng(seed)
    for _ in range(steps):
        idx = rng.integers(0, len(images), batch_size)
        step(model, optimizer, images[idx], labels[idx])
    return model


def classifier_features(model: Classifier, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """``(N, features)`` float32 penultimate-layer features of ``images``, computed in fixed-size batches."""
    images = np.asarray(images, np.float32)
    graphdef, state = nnx.split(model)
    features = jax.jit(lambda state, x: nnx.merge(graphdef, state).features(x))
    n = len(images)
    padded = np.concatenate([images, np.zeros((-n % batch_size, *images.shape[1:]), np.float32)])
    out = [features(state, padded[i : i + batch_size]) for i in range(0, len(padded), batch_size)]
    return np.asarray(jnp.concatenate(out))[:n]


def save_classifier(model: Classifier, path: str | Path) -> None:
    """Write the config and parameters to one ``.npz`` file (no pickle)."""
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    flat = {"/".join(str(k) for k in p): np.asarray(v) for p, v in _flatten_dict(params)}
    np.savez(path, __config__=json.dumps(dataclasses.asdict(model.config)), **flat)


def load_classifier(path: str | Path) -> Classifier:
    """Rebuild a :class:`Classifier` saved by :func:`save_classifier`."""
    with np.load(path) as data:
        config = ClassifierConfig(**json.loads(str(data["__config__"])))
        model = Classifier(config, rngs=nnx.Rngs(0))
        state = nnx.state(model, nnx.Param)
        flat = dict(_flatten_dict(nnx.to_pure_dict(state)))
        stored = {tuple(k.split("/")) for k in data.files if k != "__config__"}
        expected = {tuple(str(k) for k in p) for p in flat}
        if stored != expected:
            raise ValueError(f"{path} does not hold the parameters of {config}")
        params = _unflatten_dict({p: jnp.asarray(data["/".join(str(k) for k in p)]) for p in flat})
    nnx.replace_by_pure_dict(state, params)
    nnx.update(model, state)
    return model


def _flatten_dict(tree: dict, prefix: tuple = ()) -> list[tuple[tuple, object]]:
    items = []
    for k, v in tree.items():
        items += _flatten_dict(v, (*prefix, k)) if isinstance(v, dict) else [((*prefix, k), v)]
    return items


def _unflatten_dict(flat: dict[tuple, object]) -> dict:
    tree: dict = {}
    for path, v in flat.items():
        node = tree
        for k in path[:-1]:
            node = node.setdefault(k, {})
        node[path[-1]] = v
    return tree
