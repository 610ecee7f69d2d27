"""experiments/paper_figures.py: the paper's figures regenerated, and the claims they make checked."""

import importlib.util
import json
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

import cloudjax as cj
from cloudjax.noise import power_law_autocovariance


def _load_script():
    path = Path(__file__).resolve().parents[1] / "experiments" / "paper_figures.py"
    spec = importlib.util.spec_from_file_location("paper_figures", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


pf = _load_script()
PNGS = (
    "fig03_mean_std",
    "fig04_images_vs_white",
    "fig05_covariance",
    "fig06_fourier_samples",
    "fig07_fourier_covariance",
    "fig08_gamma_diag",
    "fig09_power_law_fit",
    "fig10_periodic_tiled",
    "fig11_cropped_tiled",
    "fig12_noise_types",
    "fig14_forward_process",
    "fig17_radial_snr",
    "fig19_mahalanobis",
    "wager",
)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """One tiny end-to-end run on natural-image patches: 16×16, 400 images for statistics, 60 held out."""
    out = tmp_path_factory.mktemp("paper")
    argv = ["--data", "patches:460", "--image-size", "16", "--num", "400", "--heldout", "60", "--out", str(out)]
    assert pf.main(argv) == 0
    return out, json.loads((out / "figures.json").read_text())


def test_writes_every_figure_and_its_numbers(report):
    out, numbers = report
    for name in PNGS:
        assert (out / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    assert set(numbers) == {"config", "data", *(f.__name__ for f in pf.FIGURES)}
    assert numbers["data"] == {"spec": "patches:460", "num": 400, "heldout": 60}
    assert set(numbers["fig19_mahalanobis"]["distances"]) == {
        *("white", "cloud", "images", "white-white", "white-cloud", "white-images"),
        *("cloud-cloud", "cloud-images", "images-images"),
    }
    assert len(numbers["fig07_fourier_covariance"]["points"]) == 4
    assert len(numbers["fig17_radial_snr"]["white"]["crossing_k"]) == len(pf.Config.times)


def test_bad_data_is_one_line_and_exit_2(tmp_path, capsys):
    assert pf.main(["--data", "nonsense", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: data:") and err.count("\n") == 1


def test_patches_statistics_match_the_paper_qualitatively(report):
    _, n = report
    assert n["fig03_mean_std"]["mean"]["relative_spread"] < 0.1  # μ_ij nearly uniform (Fig. 3)
    assert n["fig04_images_vs_white"]["neighbour_correlation"]["images"] > 0.7
    assert abs(n["fig04_images_vs_white"]["neighbour_correlation"]["white"]) < 0.05
    assert 1.0 < n["fig09_power_law_fit"]["delta"] < 1.7
    assert n["fig08_gamma_diag"]["cross_excess"] > 1.3  # the central cross of Figs. 6-8
    for point in n["fig07_fourier_covariance"]["points"]:
        assert point["relation_error"] < 1e-4  # C is Γ reflected and conjugated (eq. 10), exactly
    tiling = n["fig10_11_tiling"]
    assert abs(tiling["periodic"] - 1) < 0.2 and tiling["cropped"] > 2  # seams invisible / visible


def test_mahalanobis_cloud_is_closer_to_patches_than_white(report):
    d = report[1]["fig19_mahalanobis"]["distances"]
    assert d["cloud-images"] < d["white-images"]
    assert d["cloud-cloud"] < d["white-white"]


def test_wager_power_law_beats_white_on_heldout_patches(report):
    w = report[1]["wager_figure"]
    assert w["pairs"] == 60 * pf.Config.pairs
    assert w["power_law"]["mse"] < 0.9 * w["white"]["mse"]
    assert w["power_law"]["log_likelihood"] > w["white"]["log_likelihood"]
    assert len(w["scorecard"]) == 5


def test_white_crossing_sweeps_while_cloud_snr_stays_flat(report):
    snr = report[1]["fig17_radial_snr"]
    crossings = [k for k in snr["white"]["crossing_k"] if k is not None]
    assert len(crossings) >= 3 and all(a > b for a, b in zip(crossings, crossings[1:], strict=False))
    assert snr["cloud"]["log10_snr_range"] < snr["white"]["log10_snr_range"] / 3
    above = snr["white"]["snr_above_one"]
    assert all(a >= b for a, b in zip(above, above[1:], strict=False))


def _pi_matrix(H, W):
    """``(HW, HW)`` matrix of Π∘FFT on flattened fields: ``Π x = x @ matrix`` (row p is Π of the unit field e_p)."""
    return np.asarray(cj.rfft_real(np.eye(H * W).reshape(H * W, H, W), axes=(-2, -1))).reshape(H * W, H * W)


def _cloud_covariances(H, W, delta, pad):
    """Exact ``(HW, HW)`` covariance of cloud noise in real space (from its autocovariance ρ(d)) and in Π space."""
    rho = power_law_autocovariance(H, W, delta, pad)
    ys, xs = np.divmod(np.arange(H * W), W)
    real = rho[(ys[:, None] - ys[None, :]) % (pad * H), (xs[:, None] - xs[None, :]) % (pad * W)]
    pi = _pi_matrix(H, W)
    return real, pi.T @ real @ pi


def _exact_fraction(cov, standardize=False):
    if standardize:
        cov = cov / np.sqrt(np.outer(np.diag(cov), np.diag(cov)))
    return 1 - np.sum(np.diag(cov) ** 2) / np.sum(cov**2)


@pytest.mark.parametrize("pad", [1, pf.PAD])
def test_autocovariance_gives_the_noise_models_fourier_variance(pad):
    """Π applied to the full real-space covariance built from ρ(d) (the wager's model) gives exactly the Π-space
    variance the noise model computes by its lag sums."""
    _, fourier = _cloud_covariances(16, 16, 1.4, pad)
    expected = cj.PowerLawNoise(1.4, pad=pad).fourier_variance(16, 16)
    np.testing.assert_allclose(np.diag(fourier).reshape(16, 16), expected, rtol=1e-5)


def test_fourier_space_diagonalises_power_law_covariance():
    """Periodic power-law noise is exactly diagonal in Π space; the paper's aperiodic crop keeps over 85% of
    the squared covariance on the diagonal; in real space less than 10% is."""
    for pad, bound in ((1, 1e-9), (pf.PAD, 0.15)):
        real, fourier = _cloud_covariances(16, 16, 1.4, pad)
        assert _exact_fraction(real) > 0.9
        assert _exact_fraction(fourier) < bound


def test_offdiag_fraction_is_unbiased():
    """512 samples of 256 coordinates: a plain sample covariance would put ~256/512 of its energy off the
    diagonal of white noise; the U-statistics recover 0 there and the exact fractions of cloud noise."""
    white = np.random.default_rng(0).standard_normal((512, 256))
    assert abs(pf.offdiag_fraction(white)) < 0.02
    assert abs(pf.offdiag_fraction(white, standardize=True)) < 0.02
    draws = [cj.power_law_noise(jax.random.key(i), (pf.NOISE_BATCH, 16, 16, 1), 1.4) for i in range(2)]
    cloud = np.concatenate(draws).reshape(-1, 256)
    real, fourier = _cloud_covariances(16, 16, 1.4, pf.PAD)
    for standardize in (False, True):
        assert pf.offdiag_fraction(cloud, standardize) == pytest.approx(_exact_fraction(real, standardize), abs=0.05)
        pi = cloud @ _pi_matrix(16, 16)
        assert pf.offdiag_fraction(pi, standardize) == pytest.approx(_exact_fraction(fourier, standardize), abs=0.05)


def test_cross_excess():
    """1 for a radial power law (up to the ring quantisation), doubled by a doubled cross."""
    k = np.fft.fftshift(cj.wavenumbers(32, 32)).astype(np.float64)
    power = np.maximum(k, 1 / 32) ** -3.0
    cross = pf.centred_cross(32, 32, 4)
    assert pf.cross_excess(power, 4) == pytest.approx(1, abs=0.05)
    assert pf.cross_excess(np.where(cross, 2 * power, power), 4) == pytest.approx(2, rel=0.05)


def test_crossing_frequency():
    k = np.geomspace(0.02, 0.7, 30)
    assert pf.crossing_frequency(k, (0.1 / k) ** 3) == pytest.approx(0.1, rel=1e-6)  # a power law is exact
    assert pf.crossing_frequency(k, np.full_like(k, 2.0)) is None
    assert pf.crossing_frequency(k, np.full_like(k, 0.5)) is None


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="image_size"):
        pf.Config(image_size=8, cross=4)
    with pytest.raises(ValueError, match="times"):
        pf.Config(times=(0.5, 1.0))
    with pytest.raises(ValueError, match="heldout"):
        pf.Config(heldout=0)
