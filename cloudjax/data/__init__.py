"""Datasets: embedded natural patches, Fashion-MNIST files, folders, .npz, tensorflow-datasets; per-host batches."""

from cloudjax.data.patches import patches
from cloudjax.data.pipeline import SPECS, BatchIterator, open_source

__all__ = ["SPECS", "BatchIterator", "open_source", "patches"]
