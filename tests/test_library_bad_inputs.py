"""Bad inputs to the library give a clear error instead of a silent wrong result.

Each test names the mistake a user made; the error must say what was found and what is expected.
Sections: data files, SDE times, likelihood inputs, diverged samplers, caches keyed by content,
levels and units.
"""
from __future__ import annotations

import gzip
import math
import pickle
import struct
import warnings

import numpy as np
import pytest
import torch

from hybrids.data import dequantize, load_dataset, perturb_lsb, quantize, to_model_space
from hybrids.likelihood import bits_per_dim, dsm_bound, nats_to_bpd, ode_log_prob
from hybrids.metrics.fid import data_fingerprint, dataset_stats, train_domain_classifier
from hybrids.samplers import walk_jump
from hybrids.samplers.ode import ode_sample
from hybrids.samplers.sde import pc_sample, sample_from_prior
from hybrids.sdes import SubVPSDE, VESDE, VPSDE

F64 = torch.float64
SDES = [VESDE(), VPSDE(), SubVPSDE()]
SDE_IDS = ["ve", "vp", "subvp"]


# ============================================================================ 1. data files
def _mnist_npz(path, x_train, y_train=None, **extra):
    y_train = np.zeros(len(x_train), dtype=np.uint8) if y_train is None else y_train
    np.savez(path / "mnist.npz", x_train=x_train, y_train=y_train, **extra)


def _uint8_images(n, shape=(28, 28), seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(n, *shape), dtype=np.uint8)


def test_mnist_npz_with_float_images_in_unit_interval_is_rejected_with_the_conversion(tmp_path):
    """User stored MNIST as float32 in [0, 1]: it used to be cast to levels {0, 1} and train."""
    _mnist_npz(tmp_path, _uint8_images(4).astype(np.float32) / 255)
    with pytest.raises(ValueError) as info:
        load_dataset("mnist", data_dir=tmp_path)
    msg = str(info.value)
    for needle in ("mnist.npz", "'x_train'", "float32", "[0, 1]", "0..255", "uint8", "multiply by 255"):
        assert needle in msg, (needle, msg)


def test_mnist_npz_with_whole_number_floats_says_cast(tmp_path):
    """User stored levels 0..255 as float64: the message says to cast, not to rescale."""
    _mnist_npz(tmp_path, _uint8_images(3).astype(np.float64))
    with pytest.raises(ValueError, match=r"float64 with values in \[\d+, 255\].*cast them"):
        load_dataset("mnist", data_dir=tmp_path)


def test_mnist_npz_with_levels_outside_0_255_is_rejected(tmp_path):
    """User stored int16 images with values up to 300 (e.g. a wrong scaling)."""
    x = _uint8_images(3).astype(np.int16)
    x[1, 2, 3] = 300
    _mnist_npz(tmp_path, x)
    with pytest.raises(ValueError, match=r"pixel values in \[0, 300\]; expected integer levels 0\.\.255"):
        load_dataset("mnist", data_dir=tmp_path)


def test_mnist_npz_with_wrong_image_shape_is_rejected_and_channel_axis_is_accepted(tmp_path):
    """User put 32x32 images in mnist.npz; [N, 1, 28, 28] is a valid layout and loads."""
    _mnist_npz(tmp_path, _uint8_images(3, (32, 32)))
    with pytest.raises(ValueError, match=r"must be \[N, 28, 28\] or \[N, 1, 28, 28\], got shape \(3, 32, 32\)"):
        load_dataset("mnist", data_dir=tmp_path)
    x = _uint8_images(3)
    _mnist_npz(tmp_path, x[:, None])
    assert np.array_equal(load_dataset("mnist", data_dir=tmp_path).data[:, 0].numpy(), x)


def test_mnist_npz_with_label_count_mismatch_is_rejected(tmp_path):
    """User's x_train has 7 images but y_train 5 labels."""
    _mnist_npz(tmp_path, _uint8_images(7), np.zeros(5, dtype=np.uint8))
    with pytest.raises(ValueError, match=r"'y_train'.*7 images but 5 labels"):
        load_dataset("mnist", data_dir=tmp_path)


def test_mnist_npz_with_float_or_one_hot_labels_is_rejected(tmp_path):
    """User stored labels as float or one-hot rows."""
    _mnist_npz(tmp_path, _uint8_images(4), np.zeros(4, dtype=np.float32))
    with pytest.raises(ValueError, match="labels of dtype float32"):
        load_dataset("mnist", data_dir=tmp_path)
    _mnist_npz(tmp_path, _uint8_images(4), np.eye(4, 10, dtype=np.int64))
    with pytest.raises(ValueError, match=r"labels must be \[N\].*argmax"):
        load_dataset("mnist", data_dir=tmp_path)


def test_truncated_npz_names_the_file_and_the_keys(tmp_path):
    """User's download of mnist.npz stopped half way: no BadZipFile traceback."""
    _mnist_npz(tmp_path, _uint8_images(50))
    raw = (tmp_path / "mnist.npz").read_bytes()
    (tmp_path / "mnist.npz").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError) as info:
        load_dataset("mnist", data_dir=tmp_path)
    msg = str(info.value)
    assert str(tmp_path / "mnist.npz") in msg and "keys x_train, y_train" in msg and "truncated" in msg


def test_garbage_or_pickled_npz_is_rejected_without_allow_pickle_advice(tmp_path):
    """User's mnist.npz is an HTML error page, or holds object arrays: nothing is unpickled."""
    (tmp_path / "mnist.npz").write_bytes(b"<html>404 not found</html>" * 20)
    with pytest.raises(ValueError) as info:
        load_dataset("mnist", data_dir=tmp_path)
    assert "could not be read as an npz archive with keys x_train, y_train" in str(info.value)
    assert "allow_pickle" not in str(info.value)
    np.savez(tmp_path / "mnist.npz", x_train=np.array([1, "a", None], dtype=object), y_train=np.zeros(3))
    with pytest.raises(ValueError, match="pickled Python objects") as info:
        load_dataset("mnist", data_dir=tmp_path)
    assert "allow_pickle" not in str(info.value)
    (tmp_path / "mnist.npz").write_bytes(b"")
    with pytest.raises(ValueError, match="empty or ends early"):
        load_dataset("mnist", data_dir=tmp_path)


def test_npz_without_the_expected_keys_lists_the_keys_found(tmp_path):
    """User saved the arrays under other names (images=..., labels=...), or a single .npy array."""
    np.savez(tmp_path / "mnist.npz", images=_uint8_images(2), labels=np.zeros(2, dtype=np.uint8))
    with pytest.raises(ValueError, match=r"no key 'x_train', 'y_train'; expected keys x_train, y_train, found images, labels"):
        load_dataset("mnist", data_dir=tmp_path)
    with open(tmp_path / "mnist.npz", "wb") as f:
        np.save(f, _uint8_images(2))
    with pytest.raises(ValueError, match=r"single array \(\.npy format\)"):
        load_dataset("mnist", data_dir=tmp_path)


def _write_idx(path, array, type_byte=0x08, dtype=">u1", compress=False):
    payload = bytes([0, 0, type_byte, array.ndim]) + b"".join(struct.pack(">I", s) for s in array.shape)
    payload += array.astype(dtype).tobytes()
    path.write_bytes(gzip.compress(payload) if compress else payload)


def test_idx_files_truncated_gzip_and_float_images_are_rejected(tmp_path):
    """User's .gz IDX download is cut off, or the IDX images are float32 in [0, 1]."""
    x = _uint8_images(3)
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", x, compress=True)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.arange(3, dtype=np.uint8))
    raw = (tmp_path / "t10k-images-idx3-ubyte.gz").read_bytes()
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match=r"t10k-images-idx3-ubyte\.gz could not be read .*truncated"):
        load_dataset("mnist", "test", data_dir=tmp_path)
    (tmp_path / "t10k-images-idx3-ubyte.gz").unlink()
    _write_idx(tmp_path / "t10k-images-idx3-ubyte", x / 255, type_byte=0x0D, dtype=">f4")
    with pytest.raises(ValueError, match=r"t10k-images-idx3-ubyte holds dtype float32.*multiply by 255"):
        load_dataset("mnist", "test", data_dir=tmp_path)
    _write_idx(tmp_path / "t10k-images-idx3-ubyte", x)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.arange(2, dtype=np.uint8))
    with pytest.raises(ValueError, match="3 images but 2 labels"):
        load_dataset("mnist", "test", data_dir=tmp_path)


def _cifar_dir(tmp_path):
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir(exist_ok=True)
    return d


def test_cifar_batch_that_is_garbage_float_or_keyless_is_rejected(tmp_path):
    """User's CIFAR test_batch is truncated, holds float pixels, or is another pickle."""
    d = _cifar_dir(tmp_path)
    good = {b"data": _uint8_images(2, (3072,)), b"labels": [1, 2]}
    raw = pickle.dumps(good)
    (d / "test_batch").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match=r"test_batch could not be read as a CIFAR-10 python batch"):
        load_dataset("cifar10", "test", data_dir=tmp_path)
    (d / "test_batch").write_bytes(pickle.dumps({b"data": good[b"data"] / 255.0, b"labels": [1, 2]}))
    with pytest.raises(ValueError, match=r"test_batch key b'data' holds dtype float64 with values in .*multiply by 255"):
        load_dataset("cifar10", "test", data_dir=tmp_path)
    (d / "test_batch").write_bytes(pickle.dumps({b"pixels": good[b"data"]}))
    with pytest.raises(ValueError, match=r"expected a dict with keys b'data' and b'labels', found b'pixels'"):
        load_dataset("cifar10", "test", data_dir=tmp_path)
    (d / "test_batch").write_bytes(pickle.dumps({b"data": good[b"data"], b"labels": [1, 2, 3]}))
    with pytest.raises(ValueError, match="2 images but 3 labels"):
        load_dataset("cifar10", "test", data_dir=tmp_path)
    (d / "test_batch").write_bytes(pickle.dumps(good))
    assert load_dataset("cifar10", "test", data_dir=tmp_path).data.shape == (2, 3, 32, 32)


def test_imagenet_npz_float_pixels_label_mismatch_and_truncation_are_rejected(tmp_path):
    """User's downsampled-ImageNet test.npz holds floats, too few labels, or is cut off."""
    d = tmp_path / "imagenet32"
    d.mkdir()
    pixels = _uint8_images(3, (3072,))
    np.savez(d / "test.npz", data=pixels / 255.0)
    with pytest.raises(ValueError, match=r"test\.npz key 'data' holds dtype float64.*multiply by 255"):
        load_dataset("imagenet32", "test", data_dir=tmp_path)
    np.savez(d / "test.npz", data=pixels, labels=np.array([1, 2]))
    with pytest.raises(ValueError, match=r"key 'labels': 3 images but 2 labels"):
        load_dataset("imagenet32", "test", data_dir=tmp_path)
    raw = (d / "test.npz").read_bytes()
    (d / "test.npz").write_bytes(raw[:100])
    with pytest.raises(ValueError, match=r"test\.npz could not be read as an npz archive with keys data \(optional: labels\)"):
        load_dataset("imagenet32", "test", data_dir=tmp_path)


# ============================================================================ 2. SDE times
def _calls(sde, batch=2):
    x = torch.zeros(batch, 3, dtype=F64)
    return {
        "marginal_coefs": lambda t: sde.marginal_coefs(t),
        "marginal": lambda t: sde.marginal(x, t),
        "perturb": lambda t: sde.perturb(x, t, torch.zeros_like(x)),
        "drift": lambda t: sde.drift(x, t),
        "drift_coef": lambda t: sde.drift_coef(t),
        "drift_divergence": lambda t: sde.drift_divergence(t, 3),
        "diffusion": lambda t: sde.diffusion(t),
        "likelihood_weighting": lambda t: sde.likelihood_weighting(t),
        "langevin_alpha": lambda t: sde.langevin_alpha(t, 0.01),
        "discretize": lambda t: sde.discretize(x, t, 0.01),
        "reverse_drift": lambda t: sde.reverse(lambda y, s: -y).drift(x, t),
        "reverse_diffusion": lambda t: sde.reverse(lambda y, s: -y, probability_flow=True).diffusion(t),
    }


@pytest.mark.parametrize("sde", SDES, ids=SDE_IDS)
@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan")], ids=["negative", "beyond_T", "nan"])
def test_sde_methods_reject_times_outside_0_T(sde, bad):
    """User evaluated an SDE at t < 0, t > T or NaN: NaN or extrapolated values came back."""
    t = torch.tensor([0.5, bad], dtype=F64)
    for name, call in _calls(sde).items():
        with pytest.raises(ValueError, match=r"must lie in \[0, T\] = \[0, 1\.0\]; got 1 of 2 values outside it") as info:
            call(t)
        assert f"{bad:.6g}" in str(info.value), name
    with pytest.raises(ValueError, match=r"\[0, T\]"):
        sde.marginal_coefs(bad)  # a Python float too


@pytest.mark.parametrize("sde", SDES, ids=SDE_IDS)
def test_sde_time_check_allows_the_ends_and_rounding(sde):
    """t = 0, t = T and t within 1e-6 T of them (rounding) stay valid; the VE SMLD step at
    t <= dt (sigma(t - dt) := 0) still works."""
    t = torch.tensor([0.0, 1.0, 1.0 + 5e-7, -5e-7, 0.3], dtype=F64)
    for call in _calls(sde, len(t)).values():
        call(t)
    f32 = torch.tensor([0.0, 1.0], dtype=torch.float32) + torch.tensor([0.0, 1e-7])
    sde.marginal_coefs(f32)
    sde.discretize(torch.zeros(2, 3), torch.tensor([0.005, 1e-3]), 0.01)


@pytest.mark.parametrize("sde", SDES, ids=SDE_IDS)
def test_sde_time_check_leaves_valid_values_unchanged(sde):
    """The check only reads t: the coefficients equal the closed forms, bit for bit."""
    t = torch.linspace(0, 1, 101, dtype=F64)
    coefs = sde.marginal_coefs(t)
    if isinstance(sde, VESDE):
        std = sde.sigma_min * torch.exp(t * math.log(sde.sigma_max / sde.sigma_min))
        assert torch.equal(coefs.std, std) and torch.equal(coefs.mean_coef, torch.ones_like(t))
    else:
        b = sde.beta_min * t + 0.5 * t**2 * (sde.beta_max - sde.beta_min)
        std = torch.sqrt(-torch.expm1(-b)) if isinstance(sde, VPSDE) else -torch.expm1(-b)
        assert torch.equal(coefs.std, std) and torch.equal(coefs.mean_coef, torch.exp(-0.5 * b))
        assert torch.equal(sde.drift_coef(t), -0.5 * (sde.beta_min + t * (sde.beta_max - sde.beta_min)))


def test_t_for_std_rejects_stds_beyond_sigma_T():
    """User asked VP/subVP for a std only reached after T (e.g. 0.99999 > sigma(1)): t > T came back."""
    for sde in (VPSDE(), SubVPSDE()):
        sigma_T = float(sde.marginal_coefs(torch.tensor(1.0, dtype=F64)).std)
        assert float(sde.t_for_std(torch.tensor(sigma_T, dtype=F64))) == pytest.approx(1.0)
        with pytest.raises(ValueError, match=r"after T = 1\.0; stds of times in \[0, T\] lie in \(0, sigma\(T\)\]"):
            sde.t_for_std(torch.tensor([0.5, 0.5 * (sigma_T + 1)], dtype=F64))
        with pytest.raises(ValueError, match=r"\(0, 1\)"):
            sde.t_for_std(float("nan"))
    with pytest.raises(ValueError, match=r"times in \[0, T\]"):
        VESDE().t_for_std(100.0)


# ============================================================================ 3. likelihood inputs
def _gaussian_score(x, t):
    return -x


def test_ode_log_prob_rejects_non_finite_rows_by_index():
    """User passed a batch with a NaN row: the solver failed with 'underflow in dt' for all rows."""
    x = torch.zeros(5, 3, dtype=F64)
    x[1, 0] = float("nan")
    x[4, 2] = float("inf")
    with pytest.raises(ValueError, match=r"ode_log_prob: x has NaN or infinite values in 2 of 5 rows \(batch indices 1, 4\)"):
        ode_log_prob(_gaussian_score, VPSDE(), x)
    with pytest.raises(ValueError, match=r"dsm_bound: x has NaN or infinite values in 2 of 5 rows \(batch indices 1, 4\)"):
        dsm_bound(_gaussian_score, VPSDE(), x, n_times=2)


@pytest.mark.parametrize("tool", [ode_log_prob, dsm_bound], ids=["ode_log_prob", "dsm_bound"])
def test_likelihoods_of_integer_levels_say_dequantize_first(tool):
    """User passed integer levels to dsm_bound / ode_log_prob: a dtype error deep inside torch."""
    k = torch.randint(0, 256, (2, 3))
    with pytest.raises(TypeError, match=r"int64 tensor.*hybrids\.data\.dequantize.*to_model_space"):
        tool(_gaussian_score, VPSDE(), k)


def test_ode_solvers_with_a_nan_score_say_so():
    """User's score returns NaN: the adaptive solver's time turns NaN (or dt underflows)."""
    nan_score = lambda x, t: torch.full_like(x, float("nan"))  # noqa: E731
    with pytest.raises(FloatingPointError, match="score returned NaN or infinite values"):
        ode_sample(nan_score, VPSDE(), (3, 2))
    with pytest.raises(FloatingPointError, match="score returned NaN or infinite values"):
        ode_log_prob(nan_score, VPSDE(), torch.zeros(3, 2))


# ============================================================================ 4. diverged samplers
def test_walk_jump_with_a_huge_step_raises_instead_of_returning_nan():
    """User ran walk-jump with step_size=1e3 (sigma = 1): all-NaN jumps came back silently."""
    kw = dict(sigma=1.0, M=1, shape=(4, 2), n_steps=100, step_size=1e3,
              generator=torch.Generator().manual_seed(0), dtype=F64)
    with pytest.raises(FloatingPointError, match=r"step_size=1000 .*friction=1.*smaller step_size \(the default is sigma / 2 = 0\.5\)"):
        walk_jump(lambda y: -y, **kw)
    with pytest.raises(FloatingPointError, match=r"jumps after step \d+ are NaN or infinite"):
        walk_jump(lambda y: -y, **kw, record_every=10)
    with pytest.raises(FloatingPointError, match=r"overdamped walk, step_size=1000"):
        walk_jump(lambda y: -y, **kw, method="overdamped")
    ok = walk_jump(lambda y: -y, **{**kw, "step_size": 0.5})
    assert torch.isfinite(ok).all()


def test_pc_and_ode_samplers_with_non_finite_results_raise():
    """User's score blows up: pc_sample / sample_from_prior / ode_sample returned NaN samples."""
    exploding = lambda x, t: x * 1e300  # noqa: E731
    sde = VPSDE()
    with pytest.raises(FloatingPointError, match=r"pc_sample: .*NaN or infinite in 3 of 3 chains .*more steps"):
        pc_sample(exploding, sde, torch.ones(3, 2, dtype=F64), t_start=1.0, t_end=1e-3, num_steps=5)
    with pytest.raises(FloatingPointError, match=r"corrector='langevin'.*a smaller snr"):
        sample_from_prior(lambda x, t: torch.full_like(x, float("inf")), VESDE(), (3, 2), num_steps=2, corrector="langevin")
    with pytest.raises(FloatingPointError, match=r"ode_sample: the samples .* NaN or infinite in 2 of 2 rows \(method='euler'"):
        ode_sample(lambda x, t: torch.full_like(x, float("nan")), sde, (2, 2), method="euler")


def test_pc_sample_with_too_few_vp_steps_names_the_step_limit():
    """User ran the VP predictor-corrector sampler with 5 steps: beta(t) h = 4 > 1 made
    sqrt(1 - beta h) NaN and every sample NaN. The step is checked before any score call."""
    calls = []

    def score(x, t):
        calls.append(1)
        return -x

    for sde in (VPSDE(), SubVPSDE()):
        with pytest.raises(ValueError, match=r"num_steps=5 gives a step h=0\.2 too large .*beta\(t\) h <= 1.*h <= 1 / beta_max = 0\.05.*more steps"):
            sample_from_prior(score, sde, (2, 3), num_steps=5, predictor="reverse_diffusion", corrector="langevin")
    assert not calls
    assert torch.isfinite(sample_from_prior(score, VPSDE(), (2, 3), num_steps=20, predictor="reverse_diffusion",
                                            corrector="langevin", generator=torch.Generator().manual_seed(0))).all()
    assert torch.isfinite(sample_from_prior(score, VESDE(), (2, 3), num_steps=5, predictor="reverse_diffusion",
                                            corrector="langevin", eps=1e-5, generator=torch.Generator().manual_seed(0))).all()


# ============================================================================ 5. caches
class _MeanFeatures:
    """A feature extractor without training: per-image mean of the first rows."""

    name = "rowmeans"
    metric_name = "FD-test"

    def extract(self, levels, num_levels, batch_size=250):
        return levels.double().mean(dim=(1, 3)).numpy()  # [N, H]


def _mnist_dir(root, n, seed):
    root.mkdir()
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    y = np.arange(n, dtype=np.uint8) % 10
    np.savez(root / "mnist.npz", x_train=x, y_train=y, x_test=x[:10], y_test=y[:10])
    return root


def test_dataset_stats_of_a_subset_do_not_poison_the_full_set(tmp_path):
    """User computed FD statistics on a small MNIST copy (--data_dir=small), then on the full set:
    the cache, keyed by dataset name only, returned the subset's statistics."""
    cache = tmp_path / "cache"
    small, full = _mnist_dir(tmp_path / "small", 20, 0), _mnist_dir(tmp_path / "full", 40, 1)
    mu_small, _ = dataset_stats("mnist", "train", _MeanFeatures(), cache, data_dir=small)
    mu_full, _ = dataset_stats("mnist", "train", _MeanFeatures(), cache, data_dir=full)
    expected = load_dataset("mnist", data_dir=full).data.double().mean(dim=(1, 3)).mean(0).flatten().numpy()
    assert np.allclose(mu_full, expected) and not np.allclose(mu_small, mu_full)
    assert len(list((cache / "fid_stats").glob("mnist_train_rowmeans_*.npz"))) == 2
    # identical data share the cache wherever they were read from
    copy = _mnist_dir(tmp_path / "copy", 20, 0)
    assert np.array_equal(dataset_stats("mnist", "train", _MeanFeatures(), cache, data_dir=copy)[0], mu_small)
    assert len(list((cache / "fid_stats").glob("*.npz"))) == 2
    assert data_fingerprint(load_dataset("mnist", data_dir=copy)) == data_fingerprint(load_dataset("mnist", data_dir=small))


def test_corrupt_stats_cache_file_is_rebuilt_with_a_warning(tmp_path):
    """A stats cache file was cut off (disk full, killed copy): it is recomputed, not a crash."""
    cache = tmp_path / "cache"
    mu, sigma = dataset_stats("digits", "test", _MeanFeatures(), cache)
    (path,) = (cache / "fid_stats").glob("*.npz")
    path.write_bytes(path.read_bytes()[:50])
    with pytest.warns(UserWarning, match="could not be read"):
        mu2, sigma2 = dataset_stats("digits", "test", _MeanFeatures(), cache)
    assert np.array_equal(mu, mu2) and np.array_equal(sigma, sigma2)


def test_domain_classifier_cache_is_keyed_by_data_and_training_settings(tmp_path):
    """User trained the FD classifier on a subset, then evaluated on the full set: the subset's
    classifier was loaded by name. Other data or other settings now train their own."""
    cache = tmp_path / "cache"
    small, full = _mnist_dir(tmp_path / "small", 20, 0), _mnist_dir(tmp_path / "full", 40, 1)
    kw = dict(cache_dir=cache, steps=2, batch_size=4)
    a = train_domain_classifier("mnist", small, **kw)
    b = train_domain_classifier("mnist", full, **kw)
    c = train_domain_classifier("mnist", small, **kw, lr=1e-3)
    assert len({a.name, b.name, c.name}) == 3 and all(n.startswith("mnist-classifier-steps2-seed0-") for n in (a.name, b.name, c.name))
    assert len(list((cache / "classifiers").glob("mnist_cnn_steps2_seed0_*.pt"))) == 3
    again = train_domain_classifier("mnist", small, **kw)  # same data and settings: loaded
    assert again.name == a.name and len(list((cache / "classifiers").glob("*.pt"))) == 3
    for p, q in zip(again.state_dict().values(), a.state_dict().values()):
        assert torch.equal(p, q)


# ============================================================================ 6. levels and units
def test_dequantize_perturb_lsb_reject_float_out_of_range_levels_and_small_K():
    """User passed float levels, levels >= K, or K < 2 to dequantize / perturb_lsb / to_model_space."""
    k = torch.tensor([[0, 1], [2, 3]])
    for fn in (lambda k, K: dequantize(k, K), lambda k, K: perturb_lsb(k, 0.5, K)):
        with pytest.raises(TypeError, match="integer tensor of levels, got dtype torch.float32.*quantize"):
            fn(k.float(), 4)
        with pytest.raises(ValueError, match=r"found values in \[0, 3\], expected \[0, 2\]"):
            fn(k, 3)
        with pytest.raises(ValueError, match="num_levels must be an int >= 2"):
            fn(torch.zeros(2, 2, dtype=torch.int64), 1)
    with pytest.raises(ValueError, match=r"pi must be a probability in \[0, 1\]"):
        perturb_lsb(k, 1.5, 4)
    with pytest.raises(TypeError, match="num_levels=None means continuous data"):
        to_model_space(k, None)
    with pytest.raises(TypeError, match="num_levels=4 expects integer levels"):
        to_model_space(k.float(), 4)


def test_quantize_rejects_nan_and_integer_input():
    """User quantized NaN samples (they became arbitrary integers) or already-integer levels."""
    x = torch.tensor([0.0, float("nan"), 0.5, float("-inf")])
    with pytest.raises(ValueError, match="quantize got 2 NaN or infinite values of 4"):
        quantize(x, 256)
    with pytest.raises(TypeError, match="floating tensor"):
        quantize(torch.tensor([1, 2]), 4)
    with pytest.raises(ValueError, match="num_levels must be an int >= 2"):
        quantize(torch.zeros(2), 256.0)


def test_bits_per_dim_rejects_bad_dims_and_levels():
    """User passed K = 1, a float K, D = 0 or a fractional D to bits_per_dim / nats_to_bpd."""
    nll = torch.tensor([100.0])
    for bad_levels in (1, 256.5, True, None):
        with pytest.raises(ValueError, match="num_levels must be an int >= 2.*nats_to_bpd"):
            bits_per_dim(nll, 10, bad_levels)
    for bad_dims in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="num_dims must be a positive int"):
            bits_per_dim(nll, bad_dims)
        with pytest.raises(ValueError, match="num_dims must be a positive int"):
            nats_to_bpd(nll, bad_dims)
    assert bits_per_dim(nll, np.int64(10), 256) == pytest.approx(100 / (10 * math.log(2)) + 7)
