"""Tests of hybrids.metrics: Frechet distance, domain classifier, codecs, denoising, AUROC."""
from __future__ import annotations

import importlib.util
import io
import math
import sys
import types

import numpy as np
import pytest
import scipy.linalg
import torch
from hypothesis import given, settings, strategies as st
from PIL import Image

from hybrids.data import load_dataset
from hybrids.metrics.anomaly import auroc
from hybrids.metrics.compression import (
    CIFAR10_PNG_BPD,
    CIFAR10_WEBP_BPD,
    png_bits_per_dim,
    webp_bits_per_dim,
)
from hybrids.metrics.denoising import mse, psnr
from hybrids.metrics.fid import (
    FID_WEIGHTS_FILE,
    classifier_predict,
    dataset_stats,
    find_inception_weights,
    frechet_distance,
    frechet_distance_to_dataset,
    gaussian_stats,
    load_inception,
    train_domain_classifier,
)


def _random_spd(rng: np.random.Generator, dim: int, rank: int | None = None) -> np.ndarray:
    a = rng.normal(size=(dim, rank or dim))
    return a @ a.T + (0.0 if rank else 0.1) * np.eye(dim)


# ----------------------------------------------------------------------------------- Frechet
@settings(max_examples=20, deadline=None)
@given(dim=st.integers(1, 12), seed=st.integers(0, 2**31 - 1))
def test_frechet_distance_diagonal_closed_form(dim, seed):
    rng = np.random.default_rng(seed)
    mu1, mu2 = rng.normal(size=dim), rng.normal(size=dim)
    v1, v2 = rng.uniform(0.1, 3.0, size=dim), rng.uniform(0.1, 3.0, size=dim)
    # commuting covariances: sum_i (sqrt(v1_i) - sqrt(v2_i))^2 is the trace term
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(v1) - np.sqrt(v2)) ** 2)
    got = frechet_distance(mu1, np.diag(v1), mu2, np.diag(v2))
    assert got == pytest.approx(expected, rel=1e-8, abs=1e-10)


@settings(max_examples=20, deadline=None)
@given(dim=st.integers(1, 10), seed=st.integers(0, 2**31 - 1))
def test_frechet_distance_general_against_symmetric_root(dim, seed):
    rng = np.random.default_rng(seed)
    mu1, mu2 = rng.normal(size=dim), rng.normal(size=dim)
    s1, s2 = _random_spd(rng, dim), _random_spd(rng, dim)
    # independent route: Tr (S1 S2)^(1/2) = Tr (S1^(1/2) S2 S1^(1/2))^(1/2), a symmetric PSD root
    r1 = scipy.linalg.sqrtm(s1).real
    eig = np.linalg.eigvalsh(r1 @ s2 @ r1)
    root_trace = np.sum(np.sqrt(np.clip(eig, 0, None)))
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * root_trace
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-6, abs=1e-8)
    # symmetric in its arguments
    assert frechet_distance(mu2, s2, mu1, s1) == pytest.approx(expected, rel=1e-6, abs=1e-8)


def test_frechet_distance_self_zero_and_singular():
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(50, 8)) @ rng.normal(size=(8, 8))
    mu, sigma = gaussian_stats(feats)
    assert np.allclose(mu, feats.mean(0)) and np.allclose(sigma, np.cov(feats.T))
    assert abs(frechet_distance(mu, sigma, mu, sigma)) < 1e-6
    # fewer samples than features: rank-deficient covariances stay finite and ~0 against themselves
    few = rng.normal(size=(5, 20))
    mu_f, sigma_f = gaussian_stats(few)
    d = frechet_distance(mu_f, sigma_f, mu_f, sigma_f)
    assert math.isfinite(d) and abs(d) < 1e-3
    s_low = _random_spd(rng, 20, rank=3)
    d2 = frechet_distance(np.zeros(20), s_low, np.ones(20), sigma_f)
    assert math.isfinite(d2) and d2 > 20 - 1e-6  # the mean term alone is 20


def test_frechet_distance_validation():
    with pytest.raises(ValueError, match="shapes"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(2), np.eye(2))
    with pytest.raises(ValueError, match="N >= 2"):
        gaussian_stats(np.zeros((1, 4)))


def test_inception_weights_missing_message(tmp_path, monkeypatch):
    monkeypatch.delenv("HYBRIDS_FID_WEIGHTS", raising=False)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(FileNotFoundError) as info:
        load_inception(tmp_path / "nowhere.pth")
    msg = str(info.value)
    for needle in (FID_WEIGHTS_FILE, "HYBRIDS_FID_WEIGHTS", str(tmp_path / "nowhere.pth"),
                   str(tmp_path / "hub" / "checkpoints")):
        assert needle in msg


def test_inception_weights_lookup_order(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    hub_file = tmp_path / "hub" / "checkpoints" / FID_WEIGHTS_FILE
    hub_file.parent.mkdir(parents=True)
    hub_file.write_bytes(b"x")
    env_file = tmp_path / "env.pth"
    env_file.write_bytes(b"x")
    monkeypatch.delenv("HYBRIDS_FID_WEIGHTS", raising=False)
    assert find_inception_weights() == hub_file
    monkeypatch.setenv("HYBRIDS_FID_WEIGHTS", str(env_file))
    assert find_inception_weights() == env_file
    assert find_inception_weights(hub_file) == hub_file


@pytest.mark.skipif(importlib.util.find_spec("pytorch_fid") is not None, reason="pytorch-fid is installed")
def test_inception_missing_package_message(tmp_path):
    weights = tmp_path / FID_WEIGHTS_FILE
    weights.write_bytes(b"not really weights")
    with pytest.raises(ImportError, match=r"pip install hybrids\[fid\]"):
        load_inception(weights)


def _fake_pytorch_fid(monkeypatch):
    """Install a stand-in pytorch_fid whose InceptionV3 fetches weights by URL, as the real one."""
    inception = types.ModuleType("pytorch_fid.inception")

    def no_download(*args, **kwargs):
        raise AssertionError("tried to download weights")

    class FakeInceptionV3(torch.nn.Module):
        BLOCK_INDEX_BY_DIM = {2048: 3}

        def __init__(self, output_blocks):
            super().__init__()
            assert list(output_blocks) == [3]
            self.linear = torch.nn.Linear(3, 4)
            self.linear.load_state_dict(inception.load_state_dict_from_url("https://example.invalid/w.pth"))

        def forward(self, x):  # [B, 3, H, W] in [0, 1] -> [[B, 4, 1, 1]]
            return [self.linear(x.mean(dim=(2, 3)))[:, :, None, None]]

    inception.load_state_dict_from_url = no_download
    inception.InceptionV3 = FakeInceptionV3
    package = types.ModuleType("pytorch_fid")
    package.inception = inception
    monkeypatch.setitem(sys.modules, "pytorch_fid", package)
    monkeypatch.setitem(sys.modules, "pytorch_fid.inception", inception)
    return inception, no_download


def test_load_inception_serves_local_weights(tmp_path, monkeypatch):
    inception, no_download = _fake_pytorch_fid(monkeypatch)
    reference = torch.nn.Linear(3, 4)
    weights = tmp_path / FID_WEIGHTS_FILE
    torch.save(reference.state_dict(), weights)
    extractor = load_inception(weights)
    assert inception.load_state_dict_from_url is no_download  # patch undone
    assert extractor.metric_name == "FID"
    levels = torch.randint(0, 256, (5, 1, 6, 6), generator=torch.Generator().manual_seed(0))
    feats = extractor.extract(levels, 256, batch_size=2)
    x = (levels.double() / 255).expand(-1, 3, -1, -1).mean(dim=(2, 3))
    expected = x @ reference.weight.double().T + reference.bias.double()
    assert feats.shape == (5, 4) and np.allclose(feats, expected.detach().numpy(), atol=1e-6)


# ----------------------------------------------------------------------------------- classifier
@pytest.fixture(scope="module")
def digits_classifier(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    return train_domain_classifier("digits", cache_dir=cache, steps=200, seed=0), cache


def test_domain_classifier_accuracy_and_cache(digits_classifier):
    clf, cache = digits_classifier
    test = load_dataset("digits", "test")
    accuracy = (classifier_predict(clf, test.data) == test.labels).double().mean().item()
    assert accuracy > 0.85
    assert clf.test_accuracy == pytest.approx(accuracy)
    assert clf.metric_name == "FD-digits classifier" and "FID" not in clf.metric_name
    cached = train_domain_classifier("digits", cache_dir=cache, steps=200, seed=0)
    assert cached.test_accuracy == clf.test_accuracy
    for a, b in zip(cached.state_dict().values(), clf.state_dict().values()):
        assert torch.equal(a, b)
    assert not list((cache / "classifiers").glob("*.tmp"))


def test_classifier_predict_counts_classes(digits_classifier):
    clf, _ = digits_classifier
    test = load_dataset("digits", "test")
    pred = classifier_predict(clf, test.data)
    assert pred.shape == (len(test),) and pred.dtype == torch.int64
    counts = torch.bincount(pred, minlength=10)
    assert counts.sum() == len(test) and (counts > 0).all()  # the test split holds all ten digits
    ones = test.data[test.labels == 1]
    assert (classifier_predict(clf, ones) == 1).double().mean() > 0.7
    with pytest.raises(ValueError, match="images"):
        clf.features(torch.zeros(2, 1, 28, 28, dtype=torch.int64))


def test_classifier_frechet_distance_and_stats_cache(digits_classifier):
    clf, cache = digits_classifier
    test = load_dataset("digits", "test")
    real = frechet_distance_to_dataset(test.data, 17, clf, "digits", "train", cache)
    assert set(real) == {"FD-digits classifier"}
    noise = torch.randint(0, 17, test.data.shape, generator=torch.Generator().manual_seed(0))
    fake = frechet_distance_to_dataset(noise, 17, clf, "digits", "train", cache)
    assert fake["FD-digits classifier"] > 5 * real["FD-digits classifier"]
    files = list((cache / "fid_stats").glob("*.npz"))
    assert len(files) == 1 and "digits_train_digits-classifier" in files[0].name
    # the cached statistics equal a direct computation
    mu, sigma = dataset_stats("digits", "train", clf, cache)
    mu_direct, sigma_direct = gaussian_stats(clf.extract(load_dataset("digits").data, 17))
    assert np.allclose(mu, mu_direct) and np.allclose(sigma, sigma_direct)
    with pytest.raises(ValueError, match="K=17"):
        clf.extract(test.data, 256)


# ----------------------------------------------------------------------------------- codecs
def _pillow_bytes(img_hwc: np.ndarray, fmt: str, **kwargs) -> int:
    mode = "L" if img_hwc.shape[-1] == 1 else "RGB"
    buf = io.BytesIO()
    Image.fromarray(img_hwc.squeeze(-1) if mode == "L" else img_hwc, mode).save(buf, format=fmt, **kwargs)
    return len(buf.getvalue())


@pytest.mark.parametrize("channels", [1, 3])
def test_codec_bpd_equals_bytes(channels):
    rng = np.random.default_rng(channels)
    # smooth-ish images: a gradient plus small noise
    grad = np.add.outer(np.arange(16), np.arange(16)) * 7
    images = (grad[None, None] + rng.integers(0, 8, size=(3, channels, 16, 16))).clip(0, 255).astype(np.uint8)
    dims = images.size
    hwc = images.transpose(0, 2, 3, 1)
    png = sum(_pillow_bytes(im, "PNG") for im in hwc)
    webp = sum(_pillow_bytes(im, "WEBP", lossless=True, quality=100, method=6) for im in hwc)
    assert png_bits_per_dim(images) == pytest.approx(8 * png / dims)
    assert webp_bits_per_dim(torch.from_numpy(images).long()) == pytest.approx(8 * webp / dims)
    if channels == 1:
        assert png_bits_per_dim(images[:, 0]) == pytest.approx(8 * png / dims)  # [N, H, W]


def test_webp_is_lossless():
    from hybrids.metrics.compression import encode_image

    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, size=(12, 10, 3), dtype=np.uint8)
    decoded = np.asarray(Image.open(io.BytesIO(encode_image(img, "WEBP"))).convert("RGB"))
    assert np.array_equal(decoded, img)


def test_codec_bpd_constant_and_noise():
    const = np.full((4, 3, 32, 32), 128, dtype=np.uint8)
    assert png_bits_per_dim(const) < 0.5 and webp_bits_per_dim(const) < 0.5
    noise = np.random.default_rng(0).integers(0, 256, size=(4, 3, 32, 32), dtype=np.uint8)
    assert png_bits_per_dim(noise) > 7.9 and webp_bits_per_dim(noise) > 7.5
    assert CIFAR10_WEBP_BPD < CIFAR10_PNG_BPD < 8


def test_codec_validation():
    with pytest.raises(ValueError, match=r"\[0, 255\]"):
        png_bits_per_dim(np.full((1, 1, 4, 4), 300))
    with pytest.raises(TypeError, match="integer"):
        png_bits_per_dim(np.zeros((1, 1, 4, 4), dtype=np.float32))
    with pytest.raises(ValueError, match="shape"):
        webp_bits_per_dim(np.zeros((1, 2, 4, 4), dtype=np.uint8))


# ----------------------------------------------------------------------------------- denoising
def test_mse_psnr_closed_forms():
    x = torch.zeros(3, 2, 4, 4, dtype=torch.float64)
    y = x + torch.tensor([0.1, 0.5, 1.0], dtype=torch.float64).view(3, 1, 1, 1)
    assert torch.allclose(mse(x, y), torch.tensor([0.01, 0.25, 1.0], dtype=torch.float64))
    expected = 10 * torch.log10(4.0 / torch.tensor([0.01, 0.25, 1.0], dtype=torch.float64))
    assert torch.allclose(psnr(x, y), expected)
    assert torch.allclose(psnr(x, y, data_range=1.0), expected - 20 * math.log10(2.0))
    assert torch.isinf(psnr(x, x)).all()
    with pytest.raises(ValueError, match="same shape"):
        mse(x, y[:2])
    with pytest.raises(ValueError, match="data_range"):
        psnr(x, y, data_range=0.0)


# ----------------------------------------------------------------------------------- anomaly
def test_auroc_separable_identical_and_pairs():
    assert auroc([0.1, 0.2, 0.3], [1.0, 2.0]) == 1.0
    assert auroc([1.0, 2.0], [0.1, 0.2, 0.3]) == 0.0
    assert auroc(torch.ones(5), torch.ones(7)) == 0.5
    s_in = np.random.default_rng(0).normal(size=40)
    s_out = np.random.default_rng(1).normal(size=30) + 0.5
    pairs = (s_out[:, None] > s_in[None, :]).mean()  # Mann-Whitney form of the AUROC
    assert auroc(s_in, s_out) == pytest.approx(pairs)
    with pytest.raises(ValueError, match="non-empty"):
        auroc([], [1.0])
    with pytest.raises(ValueError, match="non-finite"):
        auroc([1.0, float("nan")], [2.0])
    with pytest.raises(ValueError, match="1-D"):
        auroc(np.zeros((2, 2)), [1.0])
