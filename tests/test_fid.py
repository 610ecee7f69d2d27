"""FID/KID: the Inception-v3 against pytorch-fid's (a committed fixture), the formulas against NumPy/SciPy, the
weight loader and the CLI. The fixture's random weights are redrawn here from its seed (make_fid_fixture.py)."""

import ast
import importlib.util
import zipfile
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

from cloudjax import cli, fid, metrics
from cloudjax.models import inception

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = np.load(ROOT / "tests" / "data" / "fid_reference.npz")
SETS = ("rgb32", "grey32", "rgb64", "grey64")
_spec = importlib.util.spec_from_file_location("make_fid_fixture", ROOT / "benchmarks" / "make_fid_fixture.py")
make_fixture = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make_fixture)


def _images(name: str) -> np.ndarray:
    return FIXTURE[name].astype(np.float32) / 255


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    """The fixture's random weights as a file in the reference layout: every key of pytorch-fid's state dict
    (the unused 1008-way head included) plus a BatchNorm batch counter, which the loader must ignore."""
    layout = dict(zip(FIXTURE["keys"], map(ast.literal_eval, FIXTURE["shapes"]), strict=True))
    state = make_fixture.random_state_dict(layout, int(FIXTURE["seed"]))
    path = tmp_path_factory.mktemp("inception") / "random_inception.npz"
    np.savez(path, **state, **{"Mixed_5b.branch1x1.bn.num_batches_tracked": np.int64(0)})
    return path


def test_layout_is_the_reference_state_dict():
    """Every key and shape the network reads is in pytorch-fid's state dict, and only its 1008-way head is left."""
    reference = dict(zip(FIXTURE["keys"], map(ast.literal_eval, FIXTURE["shapes"]), strict=True))
    assert inception.reference_layout() == {k: v for k, v in reference.items() if not k.startswith("fc.")}
    assert {k for k in reference if k.startswith("fc.")} == {"fc.weight", "fc.bias"}


@pytest.fixture(scope="module")
def features(weights) -> dict[str, np.ndarray]:
    """cloudjax's features of the fixture's images, in batches of 2 (one program per image size)."""
    return {name: fid.inception_features(_images(name), weights, batch_size=2) for name in SETS}


def test_features_equal_pytorch_fid(features):
    """pool3 features of 32×32 and 64×64 RGB and grey images match pytorch-fid's InceptionV3 to 1e-4 relative."""
    ref = {name: FIXTURE[f"{name}_features"] for name in SETS}
    # the test means something: features of different images differ far beyond the tolerance
    all_ref = np.concatenate(list(ref.values()))
    gaps = [np.abs(a - b).max() for i, a in enumerate(all_ref) for b in all_ref[i + 1 :]]
    assert min(gaps) > 100 * 1e-4 * np.abs(all_ref).max()
    for name in SETS:
        f = features[name]
        assert f.shape == (len(ref[name]), 2048) and f.dtype == np.float32
        np.testing.assert_array_less(np.abs(f - ref[name]).max(axis=1), 1e-4 * np.abs(ref[name]).max(axis=1))


def test_bfloat16_features_stay_close(weights):
    f32 = FIXTURE["rgb32_features"]  # one more program: batches of 2 at 32 px in bfloat16
    bf16 = fid.inception_features(_images("rgb32"), fid.load_inception(weights, jnp.bfloat16), batch_size=2)
    assert bf16.dtype == np.float32
    assert np.linalg.norm(bf16 - f32) < 0.05 * np.linalg.norm(f32)


def _scipy_frechet(fx, fy):
    """pytorch-fid's formula with scipy.linalg.sqrtm."""
    mx, my, sx, sy = fx.mean(0), fy.mean(0), np.cov(fx, rowvar=False), np.cov(fy, rowvar=False)
    covmean = scipy.linalg.sqrtm(sx @ sy).real
    return np.sum((mx - my) ** 2) + np.trace(sx) + np.trace(sy) - 2 * np.trace(covmean)


def test_frechet_matches_scipy_and_the_closed_form():
    rng = np.random.default_rng(0)
    d = 32
    fx = rng.standard_normal((500, d)) @ rng.standard_normal((d, d)) + 1.0
    fy = rng.standard_normal((400, d)) @ rng.standard_normal((d, d))
    expected = _scipy_frechet(fx, fy)
    assert abs(metrics.frechet_distance(fx, fy) - expected) <= 1e-3 * expected
    # two Gaussians whose covariances share eigenvectors Q: d² = ‖μ_x − μ_y‖² + Σ (√a_i − √b_i)²
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    a, b = rng.uniform(0.1, 4, d), rng.uniform(0.1, 4, d)
    mx, my = rng.standard_normal(d), rng.standard_normal(d)
    closed = np.sum((mx - my) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    got = metrics.frechet_from_statistics(mx, (q * a) @ q.T, my, (q * b) @ q.T)
    assert abs(got - closed) <= 1e-9 * closed
    assert abs(metrics.frechet_from_statistics(mx, (q * a) @ q.T, mx, (q * a) @ q.T)) < 1e-9


def test_fid_of_images_and_of_saved_statistics(weights, features, tmp_path):
    """fid(images, stats file) equals the Fréchet distance of the two feature sets; stats files round-trip."""
    fy = np.concatenate([features["grey32"], features["rgb64"], features["grey64"]])
    path = fid.save_statistics(tmp_path / "y_stats", fy)
    for saved, computed in zip(fid.load_statistics(path), fid.feature_statistics(fy), strict=True):
        np.testing.assert_array_equal(saved, computed)
    expected = metrics.frechet_distance(features["rgb32"], fy)
    assert expected > 0
    assert fid.fid(_images("rgb32"), path, weights, batch_size=2) == pytest.approx(expected, rel=1e-9)
    with pytest.raises(ValueError, match="weights"):
        fid.fid(_images("rgb32"), path)


def _mmd2_unbiased(x, y):
    d = x.shape[1]
    kxx, kyy, kxy = ((a @ b.T / d + 1) ** 3 for a, b in ((x, x), (y, y), (x, y)))
    m = len(x)
    off = lambda k: (k.sum() - np.trace(k)) / (m * (m - 1))
    return off(kxx) + off(kyy) - 2 * kxy.mean()


def test_kid_is_the_unbiased_mmd():
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((60, 8)), rng.standard_normal((60, 8)) + 0.5
    mean, std = metrics.kernel_inception_distance(x, y, num_subsets=3, subset_size=60)
    assert mean == pytest.approx(_mmd2_unbiased(x, y), rel=1e-12) and std < 1e-12  # a subset of all rows
    x, y, z = rng.standard_normal((400, 8)), rng.standard_normal((400, 8)) + 0.5, rng.standard_normal((400, 8))
    shifted, _ = metrics.kernel_inception_distance(x, y, num_subsets=10, subset_size=200)
    same, same_std = metrics.kernel_inception_distance(x, z, num_subsets=10, subset_size=200)
    assert abs(same) < 3 * same_std and shifted > 30 * same_std > 0  # unbiased: no offset for equal distributions


def test_weights_loader_reads_the_reference_layout_and_explains_bad_files(weights, tmp_path):
    model = inception.load(weights)
    unit = model.Mixed_6b.branch7x7_2.conv  # a 1×7 unit: the OIHW → HWIO transpose and the folded BatchNorm
    state = np.load(weights)
    scale = state["Mixed_6b.branch7x7_2.bn.weight"] / np.sqrt(state["Mixed_6b.branch7x7_2.bn.running_var"] + 1e-3)
    np.testing.assert_allclose(
        unit.kernel[...], state["Mixed_6b.branch7x7_2.conv.weight"].transpose(2, 3, 1, 0) * scale, rtol=1e-6
    )
    converted = fid.convert_weights(weights, tmp_path / "converted")
    with np.load(converted) as c:
        assert dict((k, c[k].shape) for k in c.files) == inception.reference_layout()
    with pytest.raises(FileNotFoundError, match="missing.pth: no such file"):
        inception.load(tmp_path / "missing.pth")
    (tmp_path / "garbage.pth").write_bytes(b"not a state dict")
    with pytest.raises(ValueError, match="garbage.pth"):  # without torch: "needs torch"; with it: "not a state dict"
        inception.load(tmp_path / "garbage.pth")
    np.savez(tmp_path / "other.npz", images=np.zeros((2, 8, 8, 3)))
    with pytest.raises(ValueError, match="other.npz is not a pytorch-fid Inception state dict: 470 keys missing"):
        inception.load(tmp_path / "other.npz")
    bad = dict(np.load(weights))
    bad["Conv2d_1a_3x3.conv.weight"] = bad["Conv2d_1a_3x3.conv.weight"][:16]
    np.savez(tmp_path / "bad.npz", **bad)
    with pytest.raises(
        ValueError, match=r"Conv2d_1a_3x3.conv.weight has shape \(16, 3, 3, 3\), expected \(32, 3, 3, 3\)"
    ):
        inception.load(tmp_path / "bad.npz")
    with zipfile.ZipFile(tmp_path / "broken.npz", "w") as z:
        z.writestr("x.npy", b"not an array")
    with pytest.raises(ValueError, match="broken.npz"):
        inception.load(tmp_path / "broken.npz")


def test_pth_is_read_with_torch(weights, tmp_path):
    torch = pytest.importorskip("torch")
    state = dict(np.load(weights))
    torch.save({k: torch.from_numpy(v) for k, v in state.items()}, tmp_path / "w.pth")
    read = inception.read_state_dict(tmp_path / "w.pth")
    assert read.keys() == state.keys() and all(np.array_equal(read[k], state[k]) for k in state)


def test_cli_fid_stats_and_fid(weights, features, tmp_path, capsys):
    """fid-stats of an image .npz, then fid of a samples .npz against those statistics, as the library computes."""
    x = _images("rgb32")
    y = np.stack([np.repeat(_images("grey32")[0], 3, axis=-1), x[0]])  # images whose features are known
    np.savez(tmp_path / "data.npz", images=x)
    np.savez(tmp_path / "samples.npz", images=y)
    common = ["--inception-weights", str(weights), "--batch-size", "2"]
    out = tmp_path / "stats.npz"
    assert cli.main(["fid-stats", "--data", f"npz:{tmp_path / 'data.npz'}", "--out", str(out), *common]) == 0
    assert cli.main(["fid", str(tmp_path / "samples.npz"), str(out), *common]) == 0
    fy = np.stack([features["grey32"][0], features["rgb32"][0]])
    expected = metrics.frechet_distance(fy, features["rgb32"])
    printed = capsys.readouterr().out.strip().splitlines()[-1]
    assert printed.startswith("FID = ") and float(printed[6:]) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("weights_file", ["missing.pth", "garbage.npz"])
def test_cli_bad_weights_is_one_line(tmp_path, capsys, weights_file):
    (tmp_path / "garbage.npz").write_bytes(b"PK not a zip")
    np.savez(tmp_path / "a.npz", images=np.zeros((2, 8, 8, 1)))
    a = str(tmp_path / "a.npz")
    assert cli.main(["fid", a, a, "--inception-weights", str(tmp_path / weights_file)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: Inception weights") and weights_file in err
