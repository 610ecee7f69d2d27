"""Data sources and the per-host batch iterator: shapes, ranges, determinism, sharding, resume, errors."""

import gzip
import logging
import struct

import numpy as np
import pytest

from cloudjax.data import BatchIterator, open_source
from cloudjax.data.sources import ArraySource, letterboxed, prepare, unboxed_indices


def _ramp_source(n=37, size=4):
    """Example i is the constant image i / 255: its values name its index."""
    return ArraySource(np.repeat(np.arange(n, dtype=np.uint8), size * size).reshape(n, size, size), size, None)


def _ids(batch):
    return np.rint(batch[:, 0, 0, 0] * 255).astype(int)


# ---------------------------------------------------------------------------------------------- BatchIterator


def test_batches_shape_and_each_epoch_covers_every_example_once():
    source = _ramp_source(n=36)
    it = BatchIterator(source, 12, seed=0, process_index=0, process_count=1)
    batches = [next(it) for _ in range(6)]
    assert batches[0].shape == (12, 4, 4, 1) and batches[0].dtype == np.float32
    for epoch in (batches[:3], batches[3:]):
        assert sorted(np.concatenate([_ids(b) for b in epoch])) == list(range(36))
    assert not np.array_equal(_ids(np.concatenate(batches[:3])), _ids(np.concatenate(batches[3:])))


@pytest.mark.parametrize("process_count", [2, 4])
def test_hosts_shards_are_disjoint_and_concatenate_to_the_global_batch(process_count):
    source = _ramp_source(n=37)  # 37 is prime: global batches straddle epoch boundaries
    single = BatchIterator(source, 8, seed=3, process_index=0, process_count=1)
    hosts = [
        BatchIterator(source, 8, seed=3, process_index=r, process_count=process_count) for r in range(process_count)
    ]
    for step in range(12):
        indices = [h.indices() for h in hosts]
        np.testing.assert_array_equal(np.concatenate(indices), single.indices())
        if step * 8 // 37 == (step * 8 + 7) // 37:  # a batch inside one epoch holds 8 different examples
            assert len(np.unique(np.concatenate(indices))) == 8
        shards = [next(h) for h in hosts]
        assert all(s.shape == (8 // process_count, 4, 4, 1) for s in shards)
        np.testing.assert_array_equal(np.concatenate(shards), next(single))


def test_seed_determines_the_order():
    source = _ramp_source()
    a, b, c = (BatchIterator(source, 8, seed=s, process_index=0, process_count=1) for s in (1, 1, 2))
    first = [_ids(next(a)) for _ in range(5)]
    assert all(np.array_equal(x, _ids(next(b))) for x in first)
    assert not all(np.array_equal(x, _ids(next(c))) for x in first)


def test_resume_from_step_continues_exactly():
    source = _ramp_source()
    it = BatchIterator(source, 6, seed=5, process_index=1, process_count=2)
    for _ in range(9):
        next(it)
    resumed = BatchIterator(source, 6, seed=5, process_index=1, process_count=2, step=it.step)
    for _ in range(8):
        np.testing.assert_array_equal(next(it), next(resumed))
    assert it.step == resumed.step == 17


def test_iterator_yields_labels_sharded_and_resumable_like_the_images():
    n = 23
    images = np.repeat(np.arange(n, dtype=np.uint8), 16).reshape(n, 4, 4)
    source = ArraySource(images, 4, None, labels=np.arange(n) % 5)
    single = BatchIterator(source, 6, seed=1, process_index=0, process_count=1, labels=True)
    hosts = [BatchIterator(source, 6, seed=1, process_index=r, process_count=3, labels=True) for r in range(3)]
    for _ in range(9):  # across epoch boundaries
        x, y = next(single)
        np.testing.assert_array_equal(y, _ids(x) % 5)  # each label belongs to its image
        shards = [next(h) for h in hosts]
        np.testing.assert_array_equal(np.concatenate([s[1] for s in shards]), y)
    resumed = BatchIterator(source, 6, seed=1, process_index=0, process_count=1, step=9, labels=True)
    x, y = next(single)
    np.testing.assert_array_equal(next(resumed)[1], y)
    with pytest.raises(ValueError, match="needs labels"):
        BatchIterator(_ramp_source(), 4, seed=0, process_index=0, process_count=1, labels=True)


def test_iterator_rejects_bad_arguments():
    source = _ramp_source()
    with pytest.raises(ValueError, match="divisible by process_count"):
        BatchIterator(source, 10, seed=0, process_index=0, process_count=4)
    with pytest.raises(ValueError, match="process_index"):
        BatchIterator(source, 8, seed=0, process_index=2, process_count=2)
    with pytest.raises(ValueError, match="global_batch_size"):
        BatchIterator(source, 0, seed=0, process_index=0, process_count=1)


def test_iterator_defaults_to_this_process():
    it = BatchIterator(_ramp_source(), 8, seed=0)
    assert (it.process_index, it.process_count, it.local_batch_size) == (0, 1, 8)


# ---------------------------------------------------------------------------------------------- preparation


def test_prepare_crops_the_centre_converts_channels_and_keeps_range():
    wide = np.zeros((1, 8, 16, 3), np.uint8)
    wide[:, :, 4:12] = (255, 0, 0)  # the centre square is pure red; the sides are black
    red = prepare(wide, 8, channels=None)
    assert red.shape == (1, 8, 8, 3) and np.all(red[..., 0] == 1) and np.all(red[..., 1:] == 0)
    grey = prepare(wide, 4, channels=1)
    np.testing.assert_allclose(grey, 0.299, atol=1e-6)
    rgb = prepare(np.full((2, 5, 5), 0.25, np.float32), 9, channels=3)
    assert rgb.shape == (2, 9, 9, 3)
    np.testing.assert_allclose(rgb, 0.25, atol=1e-6)
    noise = np.random.default_rng(0).integers(0, 256, (3, 20, 20, 1), dtype=np.uint8)
    small = prepare(noise, 7, channels=None)
    assert small.min() >= 0 and small.max() <= 1 and small.std() < noise.std() / 255  # anti-aliased


def test_letterbox_filter_drops_images_with_bars_only():
    rng = np.random.default_rng(0)
    photos = rng.uniform(size=(4, 32, 32, 1)).astype(np.float32)
    boxed = photos.copy()
    boxed[0, :4] = 0  # black bar on top
    boxed[1, :, -3:] = 0.5  # grey bar on the right
    boxed[2, -2:] = 1  # thin white bar at the bottom (1-px strips are measured by default)
    assert not letterboxed(photos).any()
    np.testing.assert_array_equal(letterboxed(boxed), [True, True, True, False])


def test_drop_letterbox_subsets_a_source(tmp_path):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (6, 32, 32), dtype=np.uint8)
    images[[1, 4], :, :3] = 0
    np.savez(tmp_path / "d.npz", images=images, labels=np.arange(6))
    source = open_source(f"npz:{tmp_path / 'd.npz'}", 32, drop_letterbox=True)
    assert source.num_examples == 4
    everything = open_source(f"npz:{tmp_path / 'd.npz'}", 32)
    np.testing.assert_array_equal(unboxed_indices(everything, chunk=4), [0, 2, 3, 5])  # across chunk boundaries
    np.testing.assert_array_equal(source.get_labels([0, 1, 2, 3]), [0, 2, 3, 5])
    np.testing.assert_allclose(source.get([2]), images[[3], ..., None] / 255, atol=1e-6)


# ---------------------------------------------------------------------------------------------- npz


@pytest.mark.parametrize(
    "labels",
    [np.array([0, 1, -1, 2, 0]), np.array([0.0, 1, 1, 2, 0]), np.arange(4)],
    ids=["negative", "float", "short"],
)
def test_npz_labels_must_be_one_class_index_per_image(tmp_path, labels):
    np.savez(tmp_path / "d.npz", images=np.zeros((5, 4, 4), np.uint8), labels=labels)
    with pytest.raises(ValueError, match="labels of .* must be 5 integers >= 0"):
        open_source(f"npz:{tmp_path / 'd.npz'}", 4)


def test_npz_source_uint8_float_and_labels(tmp_path):
    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, (5, 12, 12, 3), dtype=np.uint8)
    np.savez(tmp_path / "u8.npz", images=images, labels=np.arange(5) * 2)
    s = open_source(f"npz:{tmp_path / 'u8.npz'}", 12)
    assert (s.num_examples, s.image_shape) == (5, (12, 12, 3))
    np.testing.assert_allclose(s.get([4, 1]), images[[4, 1]] / 255, atol=1e-6)
    np.testing.assert_array_equal(s.get_labels([4, 1]), [8, 2])
    assert s.num_classes == 9 and s.class_names is None  # the largest label + 1
    np.savez(tmp_path / "f.npz", x=images[..., 0] / 255.0)  # the only key, float, grey
    g = open_source(f"npz:{tmp_path / 'f.npz'}", 6)
    assert g.image_shape == (6, 6, 1) and g.get([0]).dtype == np.float32
    assert 0 <= g.get(range(5)).min() and g.get(range(5)).max() <= 1


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "file not found"),
        (b"not a zip file at all", "cannot read"),
        ({"images": np.full((2, 4, 4), 2.0)}, r"float in \[0, 1\]"),
        ({"a": np.zeros((2, 4, 4)), "b": np.zeros(2)}, "expected 'images'"),
        ({"images": np.zeros((4, 4))}, "must be"),
        ({"images": np.zeros((2, 4, 4, 4), np.uint8)}, "4 channels"),
    ],
)
def test_npz_errors_name_the_file(tmp_path, content, message):
    path = tmp_path / "bad.npz"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        np.savez(path, **content)
    with pytest.raises(ValueError, match=message) as e:
        open_source(f"npz:{path}", 4)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


# ---------------------------------------------------------------------------------------------- folder


def test_folder_source_reads_png_and_jpeg_recursively(tmp_path):
    from PIL import Image

    (tmp_path / "sub").mkdir()
    Image.fromarray(np.full((10, 30), 200, np.uint8)).save(tmp_path / "a.png")  # grey, wide
    rgb = np.zeros((40, 40, 3), np.uint8)
    rgb[..., 2] = 255
    Image.fromarray(rgb).save(tmp_path / "sub" / "b.JPG", quality=95)
    (tmp_path / "notes.txt").write_text("not an image")
    s = open_source(f"folder:{tmp_path}", 8)
    assert (s.num_examples, s.image_shape) == (2, (8, 8, 1))  # grey from the first (sorted) image
    x = s.get([0, 1])
    np.testing.assert_allclose(x[0], 200 / 255, atol=1e-6)
    np.testing.assert_allclose(x[1], 0.114, atol=0.02)  # blue → luma
    c = open_source(f"folder:{tmp_path}", 8, channels=3)
    blue = c.get([1])[0]
    assert blue[..., 2].min() > 0.9 and blue[..., :2].max() < 0.1
    assert s.num_classes is None  # an image outside the sub-folders: no classes
    with pytest.raises(ValueError, match="outside sub-folders"):
        s.get_labels([0])


def test_folder_source_has_one_class_per_sub_folder_in_sorted_order(tmp_path):
    from PIL import Image

    for name, values in (("zebra", (10, 20)), ("ant", (30,)), ("moth", (40, 50))):
        (tmp_path / name / "deeper").mkdir(parents=True)
        for i, v in enumerate(values):  # one level deeper counts for the top sub-folder
            Image.fromarray(np.full((6, 6), v, np.uint8)).save(tmp_path / name / ("deeper" if i else ".") / f"{v}.png")
    s = open_source(f"folder:{tmp_path}", 6)
    assert s.num_classes == 3 and s.class_names == ("ant", "moth", "zebra")
    values = np.rint(s.get(range(5))[:, 0, 0, 0] * 255).astype(int)
    expected = {10: 2, 20: 2, 30: 0, 40: 1, 50: 1}
    np.testing.assert_array_equal(s.get_labels(range(5)), [expected[v] for v in values])


def test_folder_errors(tmp_path):
    with pytest.raises(ValueError, match="folder not found"):
        open_source(f"folder:{tmp_path / 'missing'}", 8)
    with pytest.raises(ValueError, match="no PNG or JPEG"):
        open_source(f"folder:{tmp_path}", 8)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(ValueError, match="broken.png"):
        open_source(f"folder:{tmp_path}", 8).get([0])


# ---------------------------------------------------------------------------------------------- Fashion-MNIST IDX


def _write_idx(path, array):
    header = struct.pack(">BBBB", 0, 0, 8, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture
def fmnist_dir(tmp_path):
    rng = np.random.default_rng(3)
    for prefix, n in (("train", 6), ("t10k", 3)):
        _write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", rng.integers(1, 256, (n, 28, 28)))
        _write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    return tmp_path


def test_fashion_mnist_idx_padded_to_32_with_labels(fmnist_dir):
    s = open_source("fashion_mnist", 32, data_dir=str(fmnist_dir))
    assert (s.num_examples, s.image_shape) == (9, (32, 32, 1))
    x = s.get(range(9))
    assert x.dtype == np.float32 and x.min() >= 0 and x.max() <= 1
    assert np.all(x[:, :2] == 0) and np.all(x[:, :, -2:] == 0) and np.all(x[:, 2:30, 2:30] > 0)
    np.testing.assert_array_equal(s.get_labels(range(9)), [0, 1, 2, 3, 4, 5, 0, 1, 2])
    assert s.num_classes == 10 and s.class_names[0] == "T-shirt/top"  # all ten, whatever the files hold
    test = open_source("fashion_mnist:test", 32, data_dir=str(fmnist_dir))
    np.testing.assert_array_equal(test.get([0, 2]), x[[6, 8]])
    small = open_source("fashion_mnist:train", 16, channels=3, data_dir=str(fmnist_dir))
    assert small.image_shape == (16, 16, 3) and small.get([0]).shape == (1, 16, 16, 3)
    np.testing.assert_allclose(small.get([0]).mean(), x[0].mean(), atol=0.01)  # resizing keeps the mean


@pytest.mark.parametrize("damage", ["missing", "truncated", "not_gzip", "wrong_magic"])
def test_fashion_mnist_damaged_files_name_the_file(fmnist_dir, damage):
    path = fmnist_dir / "train-images-idx3-ubyte.gz"
    if damage == "missing":
        path.unlink()
    elif damage == "truncated":
        with gzip.open(path, "rb") as f:
            data = f.read()
        with gzip.open(path, "wb") as f:
            f.write(data[:-100])
    elif damage == "not_gzip":
        path.write_bytes(b"plain bytes, not gzip")
    else:
        _write_idx(path, np.zeros((2, 28, 28)))
        data = bytearray(gzip.decompress(path.read_bytes()))
        data[2] = 0x0D  # float32 type code
        path.write_bytes(gzip.compress(bytes(data)))
    with pytest.raises(ValueError, match="train-images-idx3-ubyte.gz"):
        open_source("fashion_mnist", 32, data_dir=str(fmnist_dir))


# ---------------------------------------------------------------------------------------------- tfds


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
    tfds = pytest.importorskip("tensorflow_datasets")

    class CloudjaxTestShapes(tfds.core.GeneratorBasedBuilder):
        """Image i is constant 10·i with label i mod 3: its pixels name it."""

        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            features = {
                "image": tfds.features.Tensor(shape=(20, 24, 3), dtype=np.uint8),
                "label": tfds.features.ClassLabel(num_classes=3),
            }
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(features))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples(12), "test": self._generate_examples(4)}

        def _generate_examples(self, n):
            for i in range(n):
                yield i, {"image": np.full((20, 24, 3), 10 * i, np.uint8), "label": i % 3}

    root = tmp_path_factory.mktemp("tfds")
    CloudjaxTestShapes(data_dir=str(root), file_format="array_record").download_and_prepare()
    return root


def test_tfds_source_reads_a_locally_built_dataset(tfds_dir):
    s = open_source("tfds:cloudjax_test_shapes", 8, data_dir=str(tfds_dir))
    assert (s.num_examples, s.image_shape) == (12, (8, 8, 3))
    x = s.get(range(12))
    assert x.dtype == np.float32 and x.shape == (12, 8, 8, 3)
    ids = np.rint(x[:, 0, 0, 0] * 255 / 10).astype(int)
    assert sorted(ids) == list(range(12)) and np.all(x == x[:, :1, :1, :1])
    np.testing.assert_array_equal(s.get_labels(range(12)), ids % 3)
    assert s.num_classes == 3 and len(s.class_names) == 3
    grey_test = open_source("tfds:cloudjax_test_shapes:test", 4, channels=1, data_dir=str(tfds_dir))
    assert grey_test.num_examples == 4 and grey_test.get([0]).shape == (1, 4, 4, 1)
    hosts = [BatchIterator(s, 6, seed=0, process_index=r, process_count=2) for r in range(2)]
    np.testing.assert_array_equal(
        np.concatenate([next(h) for h in hosts]), next(BatchIterator(s, 6, seed=0, process_index=0, process_count=1))
    )


def test_tfds_not_prepared_and_bad_split_are_one_line(tfds_dir, tmp_path, caplog):
    with pytest.raises(ValueError, match=r"tfds dataset mnist is not prepared in .*tfds build mnist") as e:
        open_source("tfds:mnist", 8, data_dir=str(tmp_path))
    assert "\n" not in str(e.value) and not [r for r in caplog.records if r.levelno >= logging.WARNING]
    with pytest.raises(ValueError, match="not prepared"):
        open_source("tfds:no_such_dataset_xyz", 8, data_dir=str(tmp_path))
    with pytest.raises(ValueError, match="validation"):
        open_source("tfds:cloudjax_test_shapes:validation", 8, data_dir=str(tfds_dir))


# ---------------------------------------------------------------------------------------------- patches, specs


def test_patches_source_is_seeded_and_in_range():
    a = open_source("patches:40", 16, seed=1)
    b = open_source("patches:40", 16, seed=1)
    c = open_source("patches:40", 16, seed=2)
    assert (a.num_examples, a.image_shape) == (40, (16, 16, 1))
    x = a.get(range(40))
    assert x.dtype == np.float32 and x.min() >= 0 and x.max() <= 1 and x.std() > 0.01
    np.testing.assert_array_equal(x, b.get(range(40)))
    assert not np.array_equal(x, c.get(range(40)))


@pytest.mark.parametrize("spec", ["imagenet", "folder:", "npz:", "tfds:", "patches:zero", "patches:0"])
def test_bad_specs_raise(spec):
    with pytest.raises(ValueError, match="data"):
        open_source(spec, 8)


def test_bad_image_size_and_channels_raise():
    with pytest.raises(ValueError, match="image_size"):
        open_source("patches:4", 0)
    with pytest.raises(ValueError, match="channels"):
        open_source("patches:4", 8, channels=2)


def test_cli_data_flags_open_the_source_and_turn_bad_data_into_usage_errors(tmp_path):
    from cloudjax.cli._common import DATA_FLAGS, UsageError, _add_config_flags, _open_data, _Parser

    parser = _Parser(prog="t")
    _add_config_flags(parser, DATA_FLAGS, defaults=True)
    np.savez(tmp_path / "d.npz", images=np.zeros((3, 8, 8), np.uint8))
    source = _open_data(parser.parse_args(["--data", f"npz:{tmp_path / 'd.npz'}", "--image-size", "4"]), channels=3)
    assert (source.num_examples, source.image_shape) == (3, (4, 4, 3))
    with pytest.raises(UsageError, match="file not found: .*missing.npz"):
        _open_data(parser.parse_args(["--data", f"npz:{tmp_path / 'missing.npz'}"]))


def test_integer_downscale_keeps_the_power_law():
    """Shrinking by an integer factor averages blocks: the fitted Δ stays near the native one (Gaussian
    anti-aliasing, as in skimage's resize, steepens it by 0.3 or more)."""
    from cloudjax.data.patches import patches
    from cloudjax.data.sources import prepare
    from cloudjax.stats import fit_power_law

    x = patches(1000, 64, normalize=None)
    native = fit_power_law(x).delta
    assert abs(fit_power_law(prepare(x, 32, None)).delta - native) < 0.1
