"""One ``--data`` spec → a random-access source; a seeded, per-host, exactly resumable batch iterator.

A *source* has ``.num_examples``, ``.image_shape = (H, W, C)`` and ``.get(indices) -> float32 (n, H, W, C)``
in [0, 1] (random access; see :mod:`cloudjax.data.sources`). :class:`BatchIterator` turns it into training
batches: the example stream is the concatenation of one permutation of ``range(N)`` per epoch, drawn from
``(seed, epoch)``; global batch ``s`` is stream positions ``[sB, (s+1)B)``; process ``r`` of ``P`` reads only
its contiguous slice ``[sB + rB/P, sB + (r+1)B/P)``. So the global batch at step ``s`` is the same whatever the
number of processes, no two processes read the same example, and the iterator's whole state is the integer
``step``. This random access + index arithmetic is what grain's ``IndexSampler`` provides; cloudjax needs no
grain (nor TensorFlow) for sharded, checkpointable input.
"""

from __future__ import annotations

import jax
import numpy as np

from cloudjax.data import sources as _sources

__all__ = ["open_source", "BatchIterator", "SPECS"]

SPECS = (
    "patches[:NUM]",
    "fashion_mnist[:train|test|all]",
    "folder:PATH",
    "npz:PATH",
    "tfds:NAME[:SPLIT]",
)


def open_source(
    spec: str,
    image_size: int,
    channels: int | None = None,
    data_dir: str | None = None,
    seed: int = 0,
    drop_letterbox: bool = False,
):
    """Open the dataset named by ``spec`` (one of :data:`SPECS`) at ``image_size``² pixels.

    ``channels`` (1 grey, 3 RGB; None keeps the data's own) converts colour by ITU-R 601 luma or repeats
    grey. ``data_dir`` is where files live for ``fashion_mnist`` (default the Debian package's
    ``/usr/share/datasets/fashion-mnist``) and ``tfds`` (default tfds's own). ``seed`` only affects
    ``patches``. ``drop_letterbox`` keeps only images without near-constant bars on their edges (the
    paper's STL-10 filter). Bad specs, missing or corrupt files raise ``ValueError`` naming them.
    """
    if int(image_size) != image_size or image_size < 1:
        raise ValueError(f"image_size must be a positive integer, got {image_size}")
    if channels not in (None, 1, 3):
        raise ValueError(f"channels must be 1, 3 or None, got {channels}")
    kind, _, arg = spec.partition(":")
    if kind == "patches":
        num = _int_arg(spec, arg, default=20_000)
        size = num * image_size**2 * (channels or 1) * 4  # held in memory as float32
        if size > MAX_PATCH_BYTES:
            most = MAX_PATCH_BYTES // (image_size**2 * (channels or 1) * 4)
            raise ValueError(f"data: {spec} would hold {size / 2**30:.0f} GiB in memory; use at most patches:{most}")
        source = _sources.patches_source(num, image_size, channels or 1, seed)
    elif kind == "fashion_mnist":
        source = _sources.fashion_mnist_source(image_size, channels, data_dir, split=arg or "all")
    elif kind == "folder" and arg:
        source = _sources.FolderSource(arg, image_size, channels)
    elif kind == "npz" and arg:
        source = _sources.npz_source(arg, image_size, channels)
    elif kind == "tfds" and arg:
        name, _, split = arg.partition(":")
        source = _sources.TfdsSource(name, split or "train", image_size, channels, data_dir)
    else:
        raise ValueError(f"data: unknown spec {spec!r}; expected one of {', '.join(SPECS)}")
    if drop_letterbox:
        source = _sources.Subset(source, _sources.unboxed_indices(source))
    return source


MAX_PATCH_BYTES = 8 * 2**30  # patches are generated and held in memory


def _int_arg(spec: str, arg: str, default: int) -> int:
    if not arg:
        return default
    if not arg.isdigit() or int(arg) < 1:
        raise ValueError(f"data: {spec!r} expects a positive integer after ':'")
    return int(arg)


class BatchIterator:
    """Endless iterator over this process's share of seeded global batches; ``.step`` is its exact position.

    ``next()`` returns float32 ``(global_batch_size // process_count, H, W, C)``: positions
    ``[step·B + r·b, step·B + (r+1)·b)`` of the epoch-permuted stream (``B`` global, ``b = B / P`` local,
    ``r`` this process); with ``labels=True``, ``(images, labels)`` with the int64 ``(b,)`` labels of the same
    examples. Construct with ``step=k`` to continue where a run saved ``k``.
    """

    def __init__(
        self,
        source,
        global_batch_size: int,
        seed: int,
        process_index: int | None = None,
        process_count: int | None = None,
        step: int = 0,
        labels: bool = False,
    ):
        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
        if global_batch_size < 1:
            raise ValueError(f"global_batch_size must be >= 1, got {global_batch_size}")
        if process_count < 1 or global_batch_size % process_count:
            raise ValueError(
                f"global_batch_size {global_batch_size} must be divisible by process_count {process_count}"
            )
        if not 0 <= process_index < process_count:
            raise ValueError(f"process_index must be in [0, {process_count}), got {process_index}")
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        if source.num_examples < 1:
            raise ValueError("source has no examples")
        if labels and source.num_classes is None:
            raise ValueError("data: class-conditional training needs labels, and this data has none")
        self.source = source
        self.global_batch_size = global_batch_size
        self.local_batch_size = global_batch_size // process_count
        self.seed = seed
        self.process_index = process_index
        self.process_count = process_count
        self.step = step
        self.labels = labels
        self._perm: tuple[int, np.ndarray] | None = None  # the last epoch's order

    def permutation(self, epoch: int) -> np.ndarray:
        """The order of epoch ``epoch``: a permutation of ``range(num_examples)`` drawn from ``(seed, epoch)``."""
        if self._perm is None or self._perm[0] != epoch:
            self._perm = (epoch, np.random.default_rng((self.seed, epoch)).permutation(self.source.num_examples))
        return self._perm[1]

    def indices(self, step: int | None = None) -> np.ndarray:
        """Example indices of this process's share of global batch ``step`` (default: the next one)."""
        step = self.step if step is None else step
        n = self.source.num_examples
        start = step * self.global_batch_size + self.process_index * self.local_batch_size
        positions = np.arange(start, start + self.local_batch_size)
        epochs, offsets = np.divmod(positions, n)
        out = np.empty_like(positions)
        for epoch in np.unique(epochs):
            mask = epochs == epoch
            out[mask] = self.permutation(int(epoch))[offsets[mask]]
        return out

    @property
    def epoch(self) -> float:
        """Epochs consumed so far (fractional)."""
        return self.step * self.global_batch_size / self.source.num_examples

    def __iter__(self) -> BatchIterator:
        return self

    def __next__(self) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        indices = self.indices()
        batch = self.source.get(indices)
        self.step += 1
        return (batch, self.source.get_labels(indices)) if self.labels else batch
