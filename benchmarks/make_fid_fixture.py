"""Make ``tests/data/fid_reference.npz``: pytorch-fid's pool3 features of a few images, with seeded random weights.

    python benchmarks/make_fid_fixture.py     # in an environment with torch, torchvision and pytorch-fid

The reference network is pytorch-fid's own ``InceptionV3`` (``FIDInceptionA/C/E``, its resize and scaling), built
with a random state dict in its key layout instead of the released weights. The 100 MB of weights are not
committed: :func:`random_state_dict` draws each array from ``(seed, crc32(key))`` in NumPy alone, so the test
draws the same arrays without torch. Convolutions get He-scaled normals and the BatchNorms gains, offsets and
running statistics near (1, 0, 0, 1), so the features stay O(1) through the 94 units. The fixture holds the images
(32×32 and 64×64, RGB and grey), their features, the seed, and every key and shape of the reference state dict.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np

SEED = 2015
OUT = Path(__file__).resolve().parents[1] / "tests" / "data" / "fid_reference.npz"


def random_array(key: str, shape: tuple[int, ...], seed: int = SEED) -> np.ndarray:
    """The seeded random value of state-dict entry ``key`` (float32), the same in every process."""
    rng = np.random.default_rng([seed, zlib.crc32(key.encode())])
    kind = key.rsplit(".", 1)[-1]
    if kind == "weight" and len(shape) == 4:  # conv (out, in, kh, kw): He-scaled
        return (rng.standard_normal(shape) * np.sqrt(2 / np.prod(shape[1:]))).astype(np.float32)
    if kind in ("weight", "running_var") and len(shape) == 1:  # BatchNorm γ and variance
        return rng.uniform(0.5, 1.5, shape).astype(np.float32)
    if kind in ("bias", "running_mean") and len(shape) == 1:
        return (0.1 * rng.standard_normal(shape)).astype(np.float32)
    return (0.01 * rng.standard_normal(shape)).astype(np.float32)  # the unused 1008-way head


def random_state_dict(layout: dict[str, tuple[int, ...]], seed: int = SEED) -> dict[str, np.ndarray]:
    """``{key: random_array(key, shape)}`` for a ``{key: shape}`` layout."""
    return {key: random_array(key, tuple(shape), seed) for key, shape in layout.items()}


def fixture_images(seed: int = SEED) -> dict[str, np.ndarray]:
    """Smooth random images plus pixel noise, uint8 (÷ 255 for [0, 1]): 2 RGB and 1 grey at 32 px, 1 RGB and 1 grey
    at 64 px."""
    rng = np.random.default_rng(seed)

    def images(n, size, channels):
        coarse = rng.uniform(0, 1, (n, 4, 4, channels))
        smooth = np.kron(coarse, np.ones((1, size // 4, size // 4, 1)))
        return np.round(255 * (0.7 * smooth + 0.3 * rng.uniform(0, 1, smooth.shape))).astype(np.uint8)

    return {
        "rgb32": images(2, 32, 3),
        "grey32": images(1, 32, 1),
        "rgb64": images(1, 64, 3),
        "grey64": images(1, 64, 1),
    }


def main() -> None:
    import torch
    import torchvision
    from pytorch_fid import inception as reference

    template = torchvision.models.inception_v3(num_classes=1008, aux_logits=False, weights=None, init_weights=False)
    layout = {k: tuple(v.shape) for k, v in template.state_dict().items() if v.is_floating_point()}
    state = {k: torch.from_numpy(v) for k, v in random_state_dict(layout).items()}
    state.update({k: v for k, v in template.state_dict().items() if not v.is_floating_point()})  # batch counters
    reference.load_state_dict_from_url = lambda *args, **kwargs: state  # instead of the released weights
    net = reference.InceptionV3([reference.InceptionV3.DEFAULT_BLOCK_INDEX]).eval()
    out = {
        "seed": np.int64(SEED),
        "keys": np.array(list(layout)),
        "shapes": np.array([str(s) for s in layout.values()]),
    }
    for name, x in fixture_images().items():
        rgb = np.repeat(x.astype(np.float32) / 255, 3 // x.shape[-1], axis=-1)  # grey → RGB as PIL's convert("RGB")
        with torch.no_grad():
            pool3 = net(torch.from_numpy(rgb).permute(0, 3, 1, 2))[0]
        out[name] = x
        out[f"{name}_features"] = pool3[:, :, 0, 0].numpy()
        f = out[f"{name}_features"]
        print(f"{name}: {x.shape} → features {f.shape}, mean {f.mean():.4f}, std {f.std():.4f}, max {f.max():.4f}")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(OUT, **out)
    print(
        f"→ {OUT} ({OUT.stat().st_size / 1e3:.0f} kB), torch {torch.__version__}, torchvision {torchvision.__version__}"
    )


if __name__ == "__main__":
    main()
