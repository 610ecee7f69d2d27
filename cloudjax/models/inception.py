"""The Inception-v3 of FID: the TensorFlow 2015 graph (``inception-2015-12-05``) as pytorch-fid ports it.

It differs from torchvision's Inception-v3 in three places: the 3×3 average pools of the A, C and first E
blocks leave the zero padding out of the mean, the last E block (``Mixed_7c``) pools by max, and the head is
1008-way (unused here). :class:`InceptionV3` maps images ``(N, H, W, 3)`` in [0, 1] to the 2048-d "pool3"
features: bilinear resize to 299×299 (half-pixel centres, no anti-aliasing: ``F.interpolate(...,
align_corners=False)``), scale to [−1, 1], 94 conv → BatchNorm (ε = 10⁻³, running statistics) → ReLU units,
global average pool.

Weights come from pytorch-fid's state dict (``pt_inception-2015-12-05-6726825d.pth``, keys such as
``Mixed_5b.branch5x5_1.conv.weight`` and ``Mixed_5b.branch5x5_1.bn.running_var``): :func:`read_state_dict`
reads that file (torch imported there only) or an ``.npz`` with the same keys, and :func:`from_state_dict` builds
the network, each BatchNorm folded into its convolution.
"""

from __future__ import annotations

import functools
import zipfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

__all__ = ["InceptionV3", "reference_layout", "from_state_dict", "read_state_dict", "load", "BN_EPS", "SIZE"]

BN_EPS = 1e-3  # BatchNorm ε of the TF graph
SIZE = 299  # input side the network resizes to
_BN = ("weight", "bias", "running_mean", "running_var")


class BasicConv(nnx.Module):
    """Conv (no bias) → BatchNorm → ReLU, the BatchNorm folded: ``relu(conv(x, W·s) + b)`` with
    ``s = γ / √(var + ε)`` and ``b = β − mean·s``. ``kernel`` and ``padding`` are ints or (h, w) pairs."""

    def __init__(self, cin: int, cout: int, kernel, stride: int = 1, padding=0, *, dtype, rngs: nnx.Rngs):
        ph, pw = (padding, padding) if isinstance(padding, int) else padding
        self.conv = nnx.Conv(
            cin,
            cout,
            (kernel, kernel) if isinstance(kernel, int) else kernel,
            strides=stride,
            padding=((ph, ph), (pw, pw)),
            dtype=dtype,
            precision="highest" if dtype == jnp.float32 else None,  # no TF32 on GPUs for float32
            rngs=rngs,
        )

    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        return jax.nn.relu(self.conv(x))


def _avg_pool(x: jnp.ndarray) -> jnp.ndarray:
    """3×3 mean, stride 1, over the pixels inside the image (TensorFlow's SAME average pool)."""
    return nnx.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)), count_include_pad=False)


def _max_pool(x: jnp.ndarray, stride: int) -> jnp.ndarray:
    """3×3 max; stride 2 without padding (a reduction) or stride 1 with padding 1."""
    return nnx.max_pool(x, (3, 3), strides=(stride, stride), padding=((2 - stride, 2 - stride),) * 2)


def _chain(x: jnp.ndarray, *layers) -> jnp.ndarray:
    for layer in layers:
        x = layer(x)
    return x


class InceptionA(nnx.Module):
    """35×35 block: 1×1 | 1×1 → 5×5 | 1×1 → 3×3 → 3×3 | avg pool → 1×1."""

    def __init__(self, cin: int, pool_features: int, **kw):
        self.branch1x1 = BasicConv(cin, 64, 1, **kw)
        self.branch5x5_1 = BasicConv(cin, 48, 1, **kw)
        self.branch5x5_2 = BasicConv(48, 64, 5, padding=2, **kw)
        self.branch3x3dbl_1 = BasicConv(cin, 64, 1, **kw)
        self.branch3x3dbl_2 = BasicConv(64, 96, 3, padding=1, **kw)
        self.branch3x3dbl_3 = BasicConv(96, 96, 3, padding=1, **kw)
        self.branch_pool = BasicConv(cin, pool_features, 1, **kw)

    def __call__(self, x):
        return jnp.concatenate(
            [
                self.branch1x1(x),
                _chain(x, self.branch5x5_1, self.branch5x5_2),
                _chain(x, self.branch3x3dbl_1, self.branch3x3dbl_2, self.branch3x3dbl_3),
                self.branch_pool(_avg_pool(x)),
            ],
            axis=-1,
        )


class InceptionB(nnx.Module):
    """35 → 17 reduction: 3×3/2 | 1×1 → 3×3 → 3×3/2 | max pool/2."""

    def __init__(self, cin: int, **kw):
        self.branch3x3 = BasicConv(cin, 384, 3, stride=2, **kw)
        self.branch3x3dbl_1 = BasicConv(cin, 64, 1, **kw)
        self.branch3x3dbl_2 = BasicConv(64, 96, 3, padding=1, **kw)
        self.branch3x3dbl_3 = BasicConv(96, 96, 3, stride=2, **kw)

    def __call__(self, x):
        dbl = _chain(x, self.branch3x3dbl_1, self.branch3x3dbl_2, self.branch3x3dbl_3)
        return jnp.concatenate([self.branch3x3(x), dbl, _max_pool(x, 2)], axis=-1)


class InceptionC(nnx.Module):
    """17×17 block with factorised 7×7 convolutions (1×7 and 7×1) of ``c7`` channels."""

    def __init__(self, cin: int, c7: int, **kw):
        row, col = dict(kernel=(1, 7), padding=(0, 3)), dict(kernel=(7, 1), padding=(3, 0))
        self.branch1x1 = BasicConv(cin, 192, 1, **kw)
        self.branch7x7_1 = BasicConv(cin, c7, 1, **kw)
        self.branch7x7_2 = BasicConv(c7, c7, **row, **kw)
        self.branch7x7_3 = BasicConv(c7, 192, **col, **kw)
        self.branch7x7dbl_1 = BasicConv(cin, c7, 1, **kw)
        self.branch7x7dbl_2 = BasicConv(c7, c7, **col, **kw)
        self.branch7x7dbl_3 = BasicConv(c7, c7, **row, **kw)
        self.branch7x7dbl_4 = BasicConv(c7, c7, **col, **kw)
        self.branch7x7dbl_5 = BasicConv(c7, 192, **row, **kw)
        self.branch_pool = BasicConv(cin, 192, 1, **kw)

    def __call__(self, x):
        dbl = (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5)
        return jnp.concatenate(
            [
                self.branch1x1(x),
                _chain(x, self.branch7x7_1, self.branch7x7_2, self.branch7x7_3),
                _chain(x, *dbl),
                self.branch_pool(_avg_pool(x)),
            ],
            axis=-1,
        )


class InceptionD(nnx.Module):
    """17 → 8 reduction: 1×1 → 3×3/2 | 1×1 → 1×7 → 7×1 → 3×3/2 | max pool/2."""

    def __init__(self, cin: int, **kw):
        self.branch3x3_1 = BasicConv(cin, 192, 1, **kw)
        self.branch3x3_2 = BasicConv(192, 320, 3, stride=2, **kw)
        self.branch7x7x3_1 = BasicConv(cin, 192, 1, **kw)
        self.branch7x7x3_2 = BasicConv(192, 192, (1, 7), padding=(0, 3), **kw)
        self.branch7x7x3_3 = BasicConv(192, 192, (7, 1), padding=(3, 0), **kw)
        self.branch7x7x3_4 = BasicConv(192, 192, 3, stride=2, **kw)

    def __call__(self, x):
        b7 = _chain(x, self.branch7x7x3_1, self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4)
        return jnp.concatenate([_chain(x, self.branch3x3_1, self.branch3x3_2), b7, _max_pool(x, 2)], axis=-1)


class InceptionE(nnx.Module):
    """8×8 block with split 1×3 / 3×1 outputs; ``pool`` is "avg" (``Mixed_7b``) or "max" (``Mixed_7c``)."""

    def __init__(self, cin: int, pool: str, **kw):
        row, col = dict(kernel=(1, 3), padding=(0, 1)), dict(kernel=(3, 1), padding=(1, 0))
        self.pool = pool
        self.branch1x1 = BasicConv(cin, 320, 1, **kw)
        self.branch3x3_1 = BasicConv(cin, 384, 1, **kw)
        self.branch3x3_2a = BasicConv(384, 384, **row, **kw)
        self.branch3x3_2b = BasicConv(384, 384, **col, **kw)
        self.branch3x3dbl_1 = BasicConv(cin, 448, 1, **kw)
        self.branch3x3dbl_2 = BasicConv(448, 384, 3, padding=1, **kw)
        self.branch3x3dbl_3a = BasicConv(384, 384, **row, **kw)
        self.branch3x3dbl_3b = BasicConv(384, 384, **col, **kw)
        self.branch_pool = BasicConv(cin, 192, 1, **kw)

    def __call__(self, x):
        b3 = self.branch3x3_1(x)
        dbl = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        pooled = _avg_pool(x) if self.pool == "avg" else _max_pool(x, 1)
        return jnp.concatenate(
            [
                self.branch1x1(x),
                self.branch3x3_2a(b3),
                self.branch3x3_2b(b3),
                self.branch3x3dbl_3a(dbl),
                self.branch3x3dbl_3b(dbl),
                self.branch_pool(pooled),
            ],
            axis=-1,
        )


class InceptionV3(nnx.Module):
    """``(N, H, W, 3)`` images in [0, 1] → ``(N, 2048)`` pool3 features (float32 whatever ``dtype`` computes).

    Attribute names are pytorch-fid's, so every unit's reference key is its path (``Mixed_6b.branch7x7_2``).
    """

    def __init__(self, dtype=jnp.float32, *, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, rngs=rngs)
        self.dtype = dtype
        self.Conv2d_1a_3x3 = BasicConv(3, 32, 3, stride=2, **kw)
        self.Conv2d_2a_3x3 = BasicConv(32, 32, 3, **kw)
        self.Conv2d_2b_3x3 = BasicConv(32, 64, 3, padding=1, **kw)
        self.Conv2d_3b_1x1 = BasicConv(64, 80, 1, **kw)
        self.Conv2d_4a_3x3 = BasicConv(80, 192, 3, **kw)
        self.Mixed_5b = InceptionA(192, 32, **kw)
        self.Mixed_5c = InceptionA(256, 64, **kw)
        self.Mixed_5d = InceptionA(288, 64, **kw)
        self.Mixed_6a = InceptionB(288, **kw)
        self.Mixed_6b = InceptionC(768, 128, **kw)
        self.Mixed_6c = InceptionC(768, 160, **kw)
        self.Mixed_6d = InceptionC(768, 160, **kw)
        self.Mixed_6e = InceptionC(768, 192, **kw)
        self.Mixed_7a = InceptionD(768, **kw)
        self.Mixed_7b = InceptionE(1280, "avg", **kw)
        self.Mixed_7c = InceptionE(2048, "max", **kw)

    def __call__(self, images: jnp.ndarray) -> jnp.ndarray:
        n, _, _, c = images.shape
        x = jax.image.resize(images.astype(jnp.float32), (n, SIZE, SIZE, c), "linear", antialias=False)
        x = (2 * x - 1).astype(self.dtype)
        x = _chain(x, self.Conv2d_1a_3x3, self.Conv2d_2a_3x3, self.Conv2d_2b_3x3)
        x = _chain(_max_pool(x, 2), self.Conv2d_3b_1x1, self.Conv2d_4a_3x3)
        x = _chain(_max_pool(x, 2), self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a)
        x = _chain(x, self.Mixed_6b, self.Mixed_6c, self.Mixed_6d, self.Mixed_6e)
        x = _chain(x, self.Mixed_7a, self.Mixed_7b, self.Mixed_7c)
        return x.astype(jnp.float32).mean(axis=(1, 2))


def _units(model: InceptionV3) -> dict[str, BasicConv]:
    """Reference key prefix → unit: ``{"Conv2d_1a_3x3": ..., "Mixed_5b.branch1x1": ...}``."""
    return {".".join(map(str, path)): m for path, m in nnx.iter_modules(model) if isinstance(m, BasicConv)}


@functools.cache
def reference_layout() -> dict[str, tuple[int, ...]]:
    """Every key the network reads from a reference state dict → its shape (the 1008-way ``fc`` is not read)."""
    model = nnx.eval_shape(lambda: InceptionV3(rngs=nnx.Rngs(0)))
    layout = {}
    for name, unit in _units(model).items():
        kh, kw, cin, cout = unit.conv.kernel.shape
        layout[f"{name}.conv.weight"] = (cout, cin, kh, kw)
        layout.update({f"{name}.bn.{k}": (cout,) for k in _BN})
    return layout


def from_state_dict(state: dict[str, np.ndarray], dtype=jnp.float32, name: str = "state dict") -> InceptionV3:
    """The network with the weights of a pytorch-fid state dict (``name`` in errors); extra keys are ignored,
    a missing key or a wrong shape raises ``ValueError``."""
    missing = [k for k in reference_layout() if k not in state]
    if missing:
        raise ValueError(
            f"{name} is not a pytorch-fid Inception state dict: {len(missing)} keys missing ({missing[0]})"
        )
    for key, shape in reference_layout().items():
        if np.shape(state[key]) != shape:
            raise ValueError(f"{name}: {key} has shape {np.shape(state[key])}, expected {shape}")
    model = nnx.eval_shape(lambda: InceptionV3(dtype, rngs=nnx.Rngs(0)))
    for prefix, unit in _units(model).items():
        gamma, beta, mean, var = (np.asarray(state[f"{prefix}.bn.{k}"], np.float64) for k in _BN)
        scale = gamma / np.sqrt(var + BN_EPS)
        weight = np.asarray(state[f"{prefix}.conv.weight"], np.float64).transpose(2, 3, 1, 0)  # OIHW → HWIO
        unit.conv.kernel = nnx.Param(jnp.asarray(weight * scale, jnp.float32))
        unit.conv.bias = nnx.Param(jnp.asarray(beta - mean * scale, jnp.float32))
    return model


def read_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """Arrays by key from pytorch-fid's ``.pth`` (needs torch) or an ``.npz`` with its keys.

    A missing file raises ``FileNotFoundError``; a file that is neither raises ``ValueError``; both name the path.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"Inception weights {path}: no such file (pytorch-fid's pt_inception-2015-12-05-6726825d.pth, "
            "or the .npz that `cloudjax fid-convert` makes of it)"
        )
    if zipfile.is_zipfile(path) and path.suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as data:
                return {k: data[k] for k in data.files}
        except (ValueError, OSError, zipfile.BadZipFile) as e:
            raise ValueError(f"Inception weights {path}: unreadable .npz ({e})") from None
    try:
        import torch
    except ImportError:
        raise ValueError(
            f"Inception weights {path}: reading a .pth needs torch (pip install torch), or convert it once with "
            "`cloudjax fid-convert` where torch is installed"
        ) from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many kinds for a file that is not a state dict
        raise ValueError(f"Inception weights {path}: not a PyTorch state dict ({type(e).__name__})") from None
    if not isinstance(state, dict):
        raise ValueError(f"Inception weights {path}: holds a {type(state).__name__}, not a state dict")
    return {k: v.float().numpy() if v.is_floating_point() else v.numpy() for k, v in state.items()}


def load(path: str | Path, dtype=jnp.float32) -> InceptionV3:
    """:func:`from_state_dict` of :func:`read_state_dict`: the FID network from a weights file."""
    return from_state_dict(read_state_dict(path), dtype, name=f"Inception weights {path}")
