"""Random-access image sources: ``.num_examples``, ``.image_shape``, ``.get(indices)``, ``.get_labels(indices)``,
``.num_classes`` and ``.class_names``.

Labels are int64 class indices in ``[0, num_classes)``; a source without labels has ``num_classes = None`` and
its ``get_labels`` raises. Classes: Fashion-MNIST's 10, a ``.npz``'s ``labels`` array, tfds's ``label`` feature, a
folder's sub-folders (one class each, in sorted order, named by them).

Every source returns float32 ``(n, H, W, C)`` in [0, 1] at the requested square size: images are centre-cropped
to a square, resized (bilinear, anti-aliased when shrinking) and converted to the requested channels (ITU-R 601
luma for grey, repetition for colour). Sources are read lazily where the data can be large (folders, tfds) and
held in memory in their stored dtype where it is small (patches, Fashion-MNIST, npz). Heavy libraries (PIL,
tensorflow-datasets) are imported only by the sources that need them.
"""

from __future__ import annotations

import gzip
import logging
import os
from pathlib import Path

import numpy as np

from cloudjax.data.patches import block_mean, patches

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)
FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)


def prepare(images, image_size: int, channels: int | None, pad: int = 0) -> np.ndarray:
    """``(n, h, w[, c])`` uint8 or [0, 1] float images → float32 ``(n, S, S, C)`` in [0, 1].

    Zero-pads ``pad`` pixels on each side, centre-crops to a square, resizes to ``S = image_size`` (by block
    averaging for an integer factor, which keeps the images' power law; bilinear otherwise), and converts to
    ``channels`` (None keeps c).
    """
    x = np.asarray(images)
    x = x[..., None] if x.ndim == 3 else x
    x = x.astype(np.float32) / 255 if x.dtype == np.uint8 else x.astype(np.float32)
    if pad:
        x = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    if channels == 1 and x.shape[-1] == 3:
        x = x @ _LUMA[:, None]
    elif channels == 3 and x.shape[-1] == 1:
        x = np.repeat(x, 3, axis=-1)
    h, w = x.shape[1:3]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    x = x[:, top : top + side, left : left + side]
    if side % image_size == 0 and side > image_size:  # block averaging keeps the power law (Δ) of the images
        x = block_mean(x, side // image_size)
    elif side != image_size:  # Gaussian anti-aliasing steepens the spectrum: Δ is biased up
        from skimage.transform import resize

        shape = (x.shape[0], image_size, image_size, x.shape[-1])
        x = resize(x, shape, order=1, anti_aliasing=image_size < side, preserve_range=True).astype(np.float32)
    return np.clip(x, 0.0, 1.0)


def _stack_prepared(images: list[np.ndarray], image_size: int, channels: int | None) -> np.ndarray:
    """:func:`prepare` for a list of images that may differ in size."""
    if all(im.shape == images[0].shape for im in images):
        return prepare(np.stack(images), image_size, channels)
    return np.concatenate([prepare(im[None], image_size, channels) for im in images])


def _native_channels(shape: tuple[int, ...], name: str) -> int:
    c = 1 if len(shape) == 2 else shape[-1]
    if c not in (1, 3):
        raise ValueError(f"data: {name} has {c} channels; expected 1 (grey) or 3 (RGB)")
    return c


def _check_labels(labels, num: int, name: str) -> np.ndarray:
    """``labels`` as int64 ``(num,)`` class indices >= 0; ``ValueError`` naming the data otherwise."""
    labels = np.asarray(labels)
    if labels.shape != (num,) or not np.issubdtype(labels.dtype, np.integer) or (num and labels.min() < 0):
        raise ValueError(f"data: labels of {name} must be {num} integers >= 0, got {labels.dtype} {labels.shape}")
    return labels.astype(np.int64)


class ArraySource:
    """Images held in memory as ``(N, h, w[, c])`` uint8 or [0, 1] float, prepared batch by batch on ``get``."""

    def __init__(
        self, images: np.ndarray, image_size: int, channels: int | None, labels=None, pad: int = 0, name="the array"
    ):
        native = _native_channels(images.shape[1:], name)
        self.images = images
        self.labels = None if labels is None else _check_labels(labels, len(images), name)
        self.num_classes = None if self.labels is None else int(self.labels.max()) + 1
        self.class_names = None
        self._prep = dict(image_size=image_size, channels=channels, pad=pad)
        self.num_examples = len(images)
        self.image_shape = (image_size, image_size, channels or native)

    def get(self, indices) -> np.ndarray:
        return prepare(self.images[np.asarray(indices)], **self._prep)

    def get_labels(self, indices) -> np.ndarray:
        if self.labels is None:
            raise ValueError("data: this source has no labels")
        return self.labels[np.asarray(indices)]


class Subset:
    """The examples ``indices`` of ``source``, in that order."""

    def __init__(self, source, indices):
        self.source = source
        self.indices = np.asarray(indices, dtype=np.int64)
        self.num_examples = len(self.indices)
        self.image_shape = source.image_shape
        self.num_classes, self.class_names = source.num_classes, source.class_names

    def get(self, indices) -> np.ndarray:
        return self.source.get(self.indices[np.asarray(indices)])

    def get_labels(self, indices) -> np.ndarray:
        return self.source.get_labels(self.indices[np.asarray(indices)])


def patches_source(num: int, image_size: int, channels: int, seed: int) -> ArraySource:
    """``num`` natural-image patches cut from scikit-image's bundled photos (:mod:`cloudjax.data.patches`)."""
    return ArraySource(patches(num, image_size, channels=channels, seed=seed, normalize=None), image_size, channels)


# ---------------------------------------------------------------------------------------------- files


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """An IDX file (the MNIST format; gzip-compressed if the name ends in .gz) as a uint8 array."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise ValueError(f"data: file not found: {path}") from None
    except (OSError, EOFError) as e:
        raise ValueError(f"data: cannot read {path}: {e}") from None
    if len(data) < 4 or data[:3] != b"\x00\x00\x08":
        raise ValueError(f"data: {path} is not an IDX file of uint8")
    ndim = data[3]
    header = 4 + 4 * ndim
    shape = tuple(int(d) for d in np.frombuffer(data[4:header], ">u4")) if len(data) >= header else ()
    if len(shape) != ndim or len(data) != header + int(np.prod(shape)):
        raise ValueError(f"data: {path} is truncated or corrupt (header and size disagree)")
    return np.frombuffer(data, np.uint8, offset=header).reshape(shape)


_FMNIST_SPLITS = {"train": ["train"], "test": ["t10k"], "all": ["train", "t10k"]}


def fashion_mnist_source(image_size: int, channels: int | None, data_dir: str | None, split: str) -> ArraySource:
    """Fashion-MNIST from its IDX .gz files (70k with ``split="all"``), padded 28 → 32 then resized; labels kept."""
    if split not in _FMNIST_SPLITS:
        raise ValueError(f"data: fashion_mnist split must be train, test or all, got {split!r}")
    root = Path(data_dir or FASHION_MNIST_DIR)
    images, labels = [], []
    for prefix in _FMNIST_SPLITS[split]:
        x = read_idx(root / f"{prefix}-images-idx3-ubyte.gz")
        y = read_idx(root / f"{prefix}-labels-idx1-ubyte.gz")
        if x.ndim != 3 or y.shape != x.shape[:1]:
            raise ValueError(f"data: {root}/{prefix}-*: {len(y)} labels for images of shape {x.shape}")
        images.append(x)
        labels.append(y)
    labels = np.concatenate(labels).astype(np.int64)
    source = ArraySource(np.concatenate(images), image_size, channels, labels=labels, pad=2)
    source.num_classes, source.class_names = len(FASHION_MNIST_CLASSES), FASHION_MNIST_CLASSES
    return source


def npz_source(path: str, image_size: int, channels: int | None) -> ArraySource:
    """Images under key ``images`` (or the only key) of a .npz, uint8 or float in [0, 1]; ``labels`` if present."""
    if not Path(path).is_file():
        raise ValueError(f"data: file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as e:  # damaged files raise zipfile, zlib, OS or value errors
        raise ValueError(f"data: cannot read {path}: {e}") from None
    key = "images" if "images" in arrays else next(iter(arrays)) if len(arrays) == 1 else None
    if key is None:
        raise ValueError(f"data: {path} has keys {list(arrays)}; expected 'images' or a single array")
    images = arrays[key]
    if images.ndim not in (3, 4) or len(images) == 0:
        raise ValueError(f"data: {path}:{key} must be (N, H, W) or (N, H, W, C), got shape {images.shape}")
    floating = np.issubdtype(images.dtype, np.floating)
    if images.dtype != np.uint8 and not (floating and images.min() >= 0 and images.max() <= 1):
        raise ValueError(f"data: {path}:{key} must be uint8 or float in [0, 1] (dtype {images.dtype})")
    return ArraySource(images, image_size, channels, labels=arrays.get("labels"), name=f"{path}:{key}")


# ---------------------------------------------------------------------------------------------- lazy


class FolderSource:
    """Every readable PNG/JPEG under ``root`` (recursively, sorted by path), decoded with PIL on ``get``.

    Labels: when every image lies in a sub-folder of ``root``, each sub-folder is a class (sorted by name, the
    class's name; ``class_names``); with images directly in ``root`` the source has no labels.

    Every file is checked when the source opens (PIL's ``verify``: headers, PNG chunk checksums, truncation);
    unreadable or damaged ones are skipped with one warning naming them, so a bad file cannot stop a run at
    the step that would read it. ``channels=None`` takes grey or RGB from the first image; every image is
    converted to it.
    """

    EXTENSIONS = (".png", ".jpg", ".jpeg")

    def __init__(self, root: str, image_size: int, channels: int | None):
        if not Path(root).is_dir():
            raise ValueError(f"data: folder not found: {root}")
        paths = sorted(p for p in Path(root).rglob("*") if p.suffix.lower() in self.EXTENSIONS and p.is_file())
        if not paths:
            raise ValueError(f"data: no PNG or JPEG images under {root}")
        bad = [p for p in paths if not self._readable(p)]
        self.paths = [p for p in paths if p not in set(bad)]
        names = ", ".join(str(p.relative_to(root)) for p in bad[:5]) + (", …" if len(bad) > 5 else "")
        if not self.paths:
            raise ValueError(f"data: every image under {root} is unreadable or damaged ({names})")
        if bad:
            logging.getLogger("cloudjax").warning(
                f"data: skipped {len(bad)} unreadable or damaged image(s) under {root}: {names}"
            )
        if channels is None:
            channels = 1 if self._open(self.paths[0]).mode in ("1", "L", "LA", "I", "I;16", "F") else 3
        folders = [p.relative_to(root).parts[:-1] for p in self.paths]
        self.class_names = tuple(sorted({f[0] for f in folders})) if all(folders) else None
        self.num_classes = None if self.class_names is None else len(self.class_names)
        if self.class_names is not None:
            self._labels = np.array([self.class_names.index(f[0]) for f in folders], np.int64)
        self.num_examples = len(self.paths)
        self.image_shape = (image_size, image_size, channels)

    @staticmethod
    def _readable(path: Path) -> bool:
        from PIL import Image

        try:
            with Image.open(path) as image:
                image.verify()
        except Exception:  # PIL raises OS, syntax, value, struct and decompression-bomb errors for bad files
            return False
        return True

    @staticmethod
    def _open(path: Path):
        from PIL import Image

        try:
            image = Image.open(path)
            image.load()
        except (OSError, SyntaxError, ValueError) as e:  # PIL's errors for damaged files
            raise ValueError(f"data: cannot read image {path}: {e}") from None
        return image

    def get(self, indices) -> np.ndarray:
        size, channels = self.image_shape[0], self.image_shape[2]
        mode = "L" if channels == 1 else "RGB"
        images = [np.asarray(self._open(self.paths[i]).convert(mode)) for i in np.asarray(indices)]
        return _stack_prepared(images, size, channels)

    def get_labels(self, indices) -> np.ndarray:
        if self.class_names is None:
            raise ValueError("data: this folder has images outside sub-folders, so no labels")
        return self._labels[np.asarray(indices)]


class TfdsSource:
    """A prepared tensorflow-datasets split read by random access (ArrayRecord; no TensorFlow, no grain).

    The image is feature ``image`` (else the first 2-D/3-D uint8 feature); labels are feature ``label``.
    """

    def __init__(self, name: str, split: str, image_size: int, channels: int | None, data_dir: str | None):
        try:
            import tensorflow_datasets as tfds
        except ImportError:
            raise ValueError("data: tfds sources need tensorflow-datasets: pip install 'cloudjax[tfds]'") from None
        where = data_dir or tfds.core.constants.DATA_DIR
        not_prepared = (
            f"tfds dataset {name} is not prepared in {where}: run `tfds build {name} --file_format=array_record` "
            "where there is internet, then pass --data-dir"
        )
        absl = logging.getLogger("absl")
        level = absl.level
        absl.setLevel(logging.ERROR)  # the lookup warns about missing folders: our one line says it better
        try:
            builder = tfds.builder(name, data_dir=data_dir)
            prepared = builder.is_prepared()
        except tfds.core.registered.DatasetNotFoundError:
            prepared = False
        finally:
            absl.setLevel(level)
        if not prepared:
            raise ValueError(not_prepared)
        try:
            self._records = builder.as_data_source(split=split)
        except NotImplementedError:  # prepared as TFRecord, which has no random access
            raise ValueError(f"{not_prepared} (it is there as TFRecord, which cannot be read by index)") from None
        except ValueError as e:  # unknown split
            raise ValueError(f"data: tfds:{name}:{split}: {e}") from None
        features = builder.info.features
        self._image_key = (
            "image"
            if "image" in features
            else next((k for k, f in features.items() if len(f.shape) in (2, 3) and f.dtype == np.uint8), None)
        )
        if self._image_key is None:
            raise ValueError(f"data: tfds dataset {name} has no image feature (features: {list(features)})")
        self._has_labels = "label" in features
        label = features["label"] if self._has_labels else None
        self.num_classes = getattr(label, "num_classes", None)
        self.class_names = tuple(label.names) if self.num_classes else None
        native = _native_channels(features[self._image_key].shape, f"tfds dataset {name}")
        self.num_examples = len(self._records)
        self.image_shape = (image_size, image_size, channels or native)
        self.name = name

    def _read(self, indices) -> list[dict]:
        return self._records.__getitems__([int(i) for i in np.asarray(indices)])

    def get(self, indices) -> np.ndarray:
        images = [np.asarray(r[self._image_key]) for r in self._read(indices)]
        return _stack_prepared(images, self.image_shape[0], self.image_shape[2])

    def get_labels(self, indices) -> np.ndarray:
        if not self._has_labels:
            raise ValueError(f"data: tfds dataset {self.name} has no 'label' feature")
        return np.array([r["label"] for r in self._read(indices)], np.int64)


# ---------------------------------------------------------------------------------------------- filters


def letterboxed(images: np.ndarray, width: int | None = None, tol: float = 0.02) -> np.ndarray:
    """``(n,)`` bool: images with a near-constant bar (pixel std < ``tol``) along any of their four edges.

    The bar is the outermost ``width`` rows or columns (default ``max(1, H // 32)``, 3 px at 96 px), measured on
    the grey image. This is the paper's letterbox filter for STL-10 in spirit: photos padded to the frame
    (black or uniform bars) are dropped, natural edges are not.
    """
    grey = images.mean(axis=-1)
    w = width or max(1, grey.shape[1] // 32)
    strips = (grey[:, :w], grey[:, -w:], grey[:, :, :w], grey[:, :, -w:])
    return np.any([s.reshape(len(grey), -1).std(axis=1) < tol for s in strips], axis=0)


def unboxed_indices(source, chunk: int = 1024) -> np.ndarray:
    """Indices of the examples of ``source`` that are not :func:`letterboxed` (one pass over the data)."""
    chunks = np.array_split(np.arange(source.num_examples), -(-source.num_examples // chunk))
    return np.concatenate([idx[~letterboxed(source.get(idx))] for idx in chunks])
