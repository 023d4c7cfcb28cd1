"""Tests of hybrids.data: toys, dataset readers (real and fake files) and transforms."""
from __future__ import annotations

import gzip
import math
import pickle
import struct

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from scipy import stats

from hybrids.data import (
    DATASETS,
    TOY_NAMES,
    ArrayDataset,
    bin_centers,
    dequantize,
    load_dataset,
    perturb_lsb,
    quantize,
    read_idx,
    sample_toy,
    to_unit_interval,
)
from hybrids.data.toys import GAUSSIAN_CENTRES, GAUSSIAN_STD, RING_RADII


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------------- toys
@pytest.mark.parametrize("name", TOY_NAMES)
def test_toy_shape_dtype_range_and_seeding(name):
    x = sample_toy(name, 4000, gen(0))
    assert x.shape == (4000, 2) and x.dtype == torch.float32
    assert torch.isfinite(x).all()
    # roughly within [-4, 4]: at most a thin Gaussian tail outside
    assert (x.abs() > 4.0).any(dim=1).double().mean() < 0.01
    assert x.abs().max() < 6.0
    assert torch.equal(x, sample_toy(name, 4000, gen(0)))
    assert not torch.equal(x, sample_toy(name, 4000, gen(1)))


def test_toy_unknown_name_and_bad_n():
    with pytest.raises(ValueError, match="checkerboard"):
        sample_toy("spirals", 10)
    with pytest.raises(ValueError, match="non-negative"):
        sample_toy("rings", -1)


def test_checkerboard_points_in_black_squares():
    x = sample_toy("checkerboard", 20_000, gen(3)).double()
    assert (x.abs() <= 4.0).all()
    cell = torch.floor((x + 4.0) / 2.0).long()  # cell indices 0..3
    assert ((cell.sum(dim=1) % 2) == 0).all()
    # all 8 black cells are used about equally
    counts = torch.bincount(cell[:, 0] * 4 + cell[:, 1], minlength=16)
    black = counts[counts > 0]
    assert len(black) == 8
    assert (black.double() / len(x) - 1 / 8).abs().max() < 0.02


def test_eight_gaussians_near_centres():
    x = sample_toy("8gaussians", 20_000, gen(4)).double()
    dist = torch.cdist(x, GAUSSIAN_CENTRES.double())
    nearest = dist.argmin(dim=1)
    assert torch.bincount(nearest, minlength=8).min() > 2000
    # distance to own centre: Rayleigh with scale GAUSSIAN_STD, mean std * sqrt(pi/2)
    d = dist.min(dim=1).values
    assert abs(d.mean().item() - GAUSSIAN_STD * math.sqrt(math.pi / 2)) < 0.01
    radii = GAUSSIAN_CENTRES.norm(dim=1)
    assert torch.allclose(radii, torch.full((8,), 2 * math.sqrt(2)), atol=1e-5)


def test_rings_radii():
    x = sample_toy("rings", 20_000, gen(5)).double()
    r = x.norm(dim=1)
    offset = (r[:, None] - torch.tensor(RING_RADII, dtype=torch.float64)).abs()
    assert (offset.min(dim=1).values < 0.08 * 4.5).double().mean() > 0.999
    counts = torch.bincount(offset.argmin(dim=1), minlength=4).double() / len(x)
    assert (counts - 0.25).abs().max() < 0.02
    # angles uniform: mean resultant length near 0
    assert x.mean(dim=0).norm() < 0.05


def test_moons_near_the_two_arcs():
    x = sample_toy("moons", 10_000, gen(6)).double() / 2.0 + torch.tensor([0.5, 0.25], dtype=torch.float64)
    a = torch.linspace(0, math.pi, 2001, dtype=torch.float64)
    upper = torch.stack([torch.cos(a), torch.sin(a)], dim=1)
    lower = torch.stack([1 - torch.cos(a), 0.5 - torch.sin(a)], dim=1)
    d_upper = torch.cdist(x, upper).min(dim=1).values
    d_lower = torch.cdist(x, lower).min(dim=1).values
    d = torch.minimum(d_upper, d_lower)
    assert (d < 0.5).all()  # noise std 0.1 per coordinate: 5 sigma
    assert d.median() < 0.15
    share_upper = (d_upper < d_lower).double().mean()
    assert abs(share_upper - 0.5) < 0.03


def test_swissroll_near_spiral():
    x = sample_toy("swissroll", 5000, gen(7)).double()
    s = torch.linspace(1.5 * math.pi, 4.5 * math.pi, 6000, dtype=torch.float64)
    curve = torch.stack([s * torch.cos(s), s * torch.sin(s)], dim=1) / 5.0
    d = torch.cdist(x, curve).min(dim=1).values
    assert (d < 1.0).all() and d.median() < 0.25


def test_pinwheel_five_fold_symmetry():
    x = sample_toy("pinwheel", 50_000, gen(8)).double()
    assert x.mean(dim=0).norm() < 0.05
    angle = torch.atan2(x[:, 1], x[:, 0])
    # rotation by 2 pi / 5 maps the distribution to itself: sector counts are equal
    sector = torch.floor((angle + math.pi) / (2 * math.pi / 5)).long().clamp(max=4)
    counts = torch.bincount(sector, minlength=5).double() / len(x)
    assert (counts - 0.2).abs().max() < 0.01
    # the radius is 2 |(1 + 0.3 e1, 0.1 e2)|: median close to 2
    assert abs(x.norm(dim=1).median().item() - 2.0) < 0.05


# ----------------------------------------------------------------------------------- datasets
def test_dataset_names_and_errors():
    assert set(TOY_NAMES) < set(DATASETS)
    assert {"digits", "mnist", "cifar10", "imagenet32", "imagenet64"} < set(DATASETS)
    with pytest.raises(ValueError, match="digits"):
        load_dataset("svhn")
    with pytest.raises(ValueError, match="split"):
        load_dataset("digits", "valid")
    with pytest.raises(ValueError, match="num_examples"):
        load_dataset("digits", num_examples=0)
    with pytest.raises(ValueError, match="toy"):
        load_dataset("digits", seed=3)


def test_array_dataset_fields():
    ds = ArrayDataset("x", torch.zeros(5, 1, 2, 3, dtype=torch.int64), torch.arange(5), 4)
    assert ds.shape == (1, 2, 3) and len(ds) == 5
    with pytest.raises(Exception):
        ds.name = "y"  # frozen
    with pytest.raises(ValueError, match="labels"):
        ArrayDataset("x", torch.zeros(5, 2), torch.arange(4), None)


def test_digits_levels_shape_and_split():
    train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
    assert train.shape == (1, 8, 8) and train.data.dtype == torch.int64
    assert train.num_levels == 17 and len(train) == 1500 and len(test) == 297
    both = torch.cat([train.data, test.data])
    assert both.min() == 0 and both.max() == 16
    from sklearn.datasets import load_digits

    bunch = load_digits()
    assert np.array_equal(both[:, 0].numpy(), bunch.images.astype(np.int64))
    assert np.array_equal(torch.cat([train.labels, test.labels]).numpy(), bunch.target)
    assert torch.equal(load_dataset("digits", "train").data, train.data)
    assert len(load_dataset("digits", num_examples=100)) == 100


def test_toy_dataset_sizes_and_seeds():
    train = load_dataset("moons", num_examples=300)
    test = load_dataset("moons", "test", num_examples=300)
    assert train.data.shape == (300, 2) and train.num_levels is None and train.labels is None
    assert not torch.equal(train.data, test.data)
    assert torch.equal(train.data, load_dataset("moons", num_examples=300).data)
    assert torch.equal(load_dataset("moons", num_examples=300, seed=5).data, sample_toy("moons", 300, gen(5)))
    assert len(load_dataset("rings")) == 50_000 and len(load_dataset("rings", "test")) == 10_000


def _fake_mnist(rng, n):
    return rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8), rng.integers(0, 10, size=n, dtype=np.uint8)


def test_mnist_from_fake_npz(tmp_path):
    rng = np.random.default_rng(0)
    x_train, y_train = _fake_mnist(rng, 7)
    x_test, y_test = _fake_mnist(rng, 3)
    np.savez(tmp_path / "mnist.npz", x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    for split, x, y in (("train", x_train, y_train), ("test", x_test, y_test)):
        ds = load_dataset("mnist", split, data_dir=tmp_path)
        assert ds.shape == (1, 28, 28) and ds.num_levels == 256 and ds.data.dtype == torch.int64
        assert np.array_equal(ds.data[:, 0].numpy(), x) and np.array_equal(ds.labels.numpy(), y)


def test_data_dir_from_environment(tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    x, y = _fake_mnist(rng, 2)
    (tmp_path / "mnist").mkdir()
    np.savez(tmp_path / "mnist" / "mnist.npz", x_train=x, y_train=y, x_test=x, y_test=y)
    monkeypatch.setenv("HYBRIDS_DATA", str(tmp_path))
    assert np.array_equal(load_dataset("mnist").data[:, 0].numpy(), x)


def _write_idx(path, array: np.ndarray, compress: bool = False) -> None:
    """Write an IDX file by hand (uint8 data): 0, 0, 0x08, ndim, big-endian sizes, bytes."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", s) for s in array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    if compress:
        payload = gzip.compress(payload)
    path.write_bytes(payload)


@pytest.mark.parametrize("compress", [False, True])
def test_mnist_idx_round_trip(tmp_path, compress):
    rng = np.random.default_rng(2)
    x, y = _fake_mnist(rng, 5)
    d = tmp_path / "mnist"
    d.mkdir()
    ext = ".gz" if compress else ""
    _write_idx(d / f"t10k-images-idx3-ubyte{ext}", x, compress)
    _write_idx(d / f"t10k-labels-idx1-ubyte{ext}", y, compress)
    assert np.array_equal(read_idx(d / f"t10k-images-idx3-ubyte{ext}"), x)
    ds = load_dataset("mnist", "test", data_dir=tmp_path)
    assert np.array_equal(ds.data[:, 0].numpy(), x) and np.array_equal(ds.labels.numpy(), y)
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte"):
        load_dataset("mnist", "train", data_dir=tmp_path)


def test_read_idx_big_endian_int32_and_errors(tmp_path):
    values = np.array([[1, -2, 70000], [3, 4, -5]], dtype=np.int32)
    header = bytes([0, 0, 0x0C, 2]) + struct.pack(">II", 2, 3)
    (tmp_path / "a.idx").write_bytes(header + values.astype(">i4").tobytes())
    assert np.array_equal(read_idx(tmp_path / "a.idx"), values)
    (tmp_path / "short.idx").write_bytes(header + b"\x00" * 5)
    with pytest.raises(ValueError, match="bytes"):
        read_idx(tmp_path / "short.idx")
    (tmp_path / "bad.idx").write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(ValueError, match="magic"):
        read_idx(tmp_path / "bad.idx")


@pytest.mark.needs_mnist
def test_real_mnist(mnist_path):
    train = load_dataset("mnist", "train", data_dir=mnist_path.parent)
    test = load_dataset("mnist", "test", data_dir=mnist_path.parent)
    assert len(train) == 60_000 and len(test) == 10_000
    assert train.shape == (1, 28, 28) and train.num_levels == 256
    assert train.data.min() == 0 and train.data.max() == 255
    assert set(torch.unique(test.labels).tolist()) == set(range(10))


def test_cifar10_from_fake_batches(tmp_path):
    rng = np.random.default_rng(3)
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, size=(2, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, size=2).tolist()
        batches[name] = (data, labels)
        with open(d / name, "wb") as f:
            pickle.dump({b"data": data, b"labels": labels, b"batch_label": b"x"}, f)
    train = load_dataset("cifar10", "train", data_dir=tmp_path)
    assert train.data.shape == (10, 3, 32, 32) and train.num_levels == 256
    first = batches["data_batch_1"][0][0]
    # channel-major rows: the first 1024 values are the red plane in raster order
    assert np.array_equal(train.data[0, 0].numpy().ravel(), first[:1024])
    assert np.array_equal(train.data[0, 2].numpy().ravel(), first[2048:])
    assert train.labels.tolist() == sum((batches[f"data_batch_{i}"][1] for i in range(1, 6)), [])
    test = load_dataset("cifar10", "test", data_dir=tmp_path)
    assert np.array_equal(test.data.reshape(2, -1).numpy(), batches["test_batch"][0])


def test_cifar10_missing_message(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        load_dataset("cifar10", "test", data_dir=tmp_path)
    msg = str(info.value)
    for needle in ("cifar-10-batches-py/test_batch", str(tmp_path), "cifar-10-python.tar.gz",
                   "--data_dir", "HYBRIDS_DATA"):
        assert needle in msg


@pytest.mark.parametrize("layout", ["flat", "nhwc", "nchw"])
@pytest.mark.parametrize("name,size", [("imagenet32", 32), ("imagenet64", 64)])
def test_imagenet_npz_layouts(tmp_path, layout, name, size):
    rng = np.random.default_rng(4)
    nchw = rng.integers(0, 256, size=(3, 3, size, size), dtype=np.uint8)
    stored = {"flat": nchw.reshape(3, -1), "nhwc": nchw.transpose(0, 2, 3, 1), "nchw": nchw}[layout]
    (tmp_path / name).mkdir()
    np.savez(tmp_path / name / "test.npz", data=stored, labels=np.array([5, 6, 7]))
    ds = load_dataset(name, "test", data_dir=tmp_path)
    assert ds.shape == (3, size, size) and np.array_equal(ds.data.numpy(), nchw)
    assert ds.labels.tolist() == [5, 6, 7]


def test_imagenet_official_batches_and_errors(tmp_path):
    rng = np.random.default_rng(5)
    d = tmp_path / "imagenet32"
    d.mkdir()
    parts = [rng.integers(0, 256, size=(2, 3072), dtype=np.uint8) for _ in range(11)]
    for i, part in enumerate(parts[:10], start=1):  # numeric order, not 1, 10, 2, ...
        np.savez(d / f"train_data_batch_{i}.npz", data=part)
    ds = load_dataset("imagenet32", "train", data_dir=tmp_path)
    assert ds.labels is None
    assert np.array_equal(ds.data.reshape(20, -1).numpy(), np.concatenate(parts[:10]))
    with pytest.raises(FileNotFoundError) as info:
        load_dataset("imagenet32", "test", data_dir=tmp_path)
    assert "imagenet32/test.npz" in str(info.value) and "val_data.npz" in str(info.value)
    np.savez(d / "test.npz", data=parts[10].reshape(2, 32, 96))
    with pytest.raises(ValueError, match="shape"):
        load_dataset("imagenet32", "test", data_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="imagenet64/train.npz"):
        load_dataset("imagenet64", data_dir=tmp_path)


def test_mnist_missing_message(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        load_dataset("mnist", data_dir=tmp_path)
    msg = str(info.value)
    for needle in ("mnist.npz", "train-images-idx3-ubyte", "train-labels-idx1-ubyte", str(tmp_path),
                   "--data_dir", "HYBRIDS_DATA"):
        assert needle in msg


# ----------------------------------------------------------------------------------- transforms
@settings(max_examples=25, deadline=None)
@given(
    num_levels=st.integers(2, 300),
    shape=st.lists(st.integers(1, 5), min_size=1, max_size=4),
    seed=st.integers(0, 2**31 - 1),
    dtype=st.sampled_from([torch.float32, torch.float64]),
)
def test_dequantize_round_trip_and_bins(num_levels, shape, seed, dtype):
    k = torch.randint(0, num_levels, shape, generator=gen(seed))
    x = dequantize(k, num_levels, gen(seed + 1), dtype=dtype)
    assert x.dtype == dtype and x.shape == k.shape
    assert torch.equal(quantize(x, num_levels), k)
    lower = 2.0 * k.double() / num_levels - 1.0
    upper = 2.0 * (k.double() + 1.0) / num_levels - 1.0
    tol = 1e-6 if dtype == torch.float32 else 1e-12
    assert (x.double() >= lower - tol).all() and (x.double() <= upper + tol).all()
    assert (x >= -1).all() and (x <= 1).all()


def test_dequantize_uniform_within_bins():
    num_levels, n = 17, 200_000
    k = torch.full((n,), 5)
    x = dequantize(k, num_levels, gen(0), dtype=torch.float64)
    u = (x + 1.0) * num_levels / 2.0 - 5.0  # back to u in [0, 1)
    assert abs(u.mean().item() - 0.5) < 4 * math.sqrt(1 / 12 / n)
    assert abs(u.var().item() - 1 / 12) < 0.002
    assert stats.kstest(u.numpy(), "uniform").pvalue > 1e-4


def test_dequantize_validation():
    with pytest.raises(TypeError, match="integer"):
        dequantize(torch.zeros(3), 4)
    with pytest.raises(ValueError, match=r"found values in \[0, 256\], expected \[0, 255\]"):
        dequantize(torch.tensor([0, 256]), 256)
    with pytest.raises(ValueError, match="num_levels"):
        dequantize(torch.tensor([0]), 1)
    with pytest.raises(TypeError, match="floating"):
        quantize(torch.tensor([0]), 4)


def test_quantize_clamps_and_helpers():
    assert quantize(torch.tensor([-1.5, -1.0, 0.999, 1.0, 3.0]), 4).tolist() == [0, 0, 3, 3, 3]
    k = torch.arange(5)
    assert torch.allclose(bin_centers(k, 5), torch.tensor([-0.8, -0.4, 0.0, 0.4, 0.8]))
    assert torch.equal(quantize(bin_centers(k, 5), 5), k)
    assert torch.allclose(to_unit_interval(torch.tensor([-1.0, 0.0, 1.0])), torch.tensor([0.0, 0.5, 1.0]))


@settings(max_examples=25, deadline=None)
@given(
    pi=st.floats(0.0, 1.0),
    num_levels=st.integers(2, 256),
    seed=st.integers(0, 2**31 - 1),
    dtype=st.sampled_from([torch.int64, torch.int32, torch.uint8]),
)
def test_perturb_lsb_properties(pi, num_levels, seed, dtype):
    n = 4000
    k = torch.randint(0, num_levels, (n,), generator=gen(seed))
    k[:50] = 0
    k[50:100] = num_levels - 1
    k = k.to(dtype)
    out = perturb_lsb(k, pi, num_levels, gen(seed + 1))
    assert out.dtype == dtype and out.shape == k.shape
    assert out.min() >= 0 and out.max() <= num_levels - 1
    diff = out.long() - k.long()
    moved = diff != 0
    assert (diff.abs() <= 1).all()  # every moved value changes by exactly one level
    # moved with probability pi (binomial, 5 sigma + continuity)
    tol = 5 * math.sqrt(pi * (1 - pi) / n) + 1e-3
    assert abs(moved.double().mean().item() - pi) <= tol
    # reflection at the ends
    end0, end1 = k.long() == 0, k.long() == num_levels - 1
    assert (out.long()[end0 & moved] == 1).all()
    assert (out.long()[end1 & moved] == num_levels - 2).all()
    if pi == 1.0:
        assert moved.all()
    if pi == 0.0:
        assert not moved.any()


def test_perturb_lsb_directions_balanced():
    n, pi = 100_000, 0.6
    k = torch.full((n,), 100)
    diff = perturb_lsb(k, pi, 256, gen(0)) - k
    for value, p in ((1, pi / 2), (-1, pi / 2), (0, 1 - pi)):
        freq = (diff == value).double().mean().item()
        assert abs(freq - p) < 5 * math.sqrt(p * (1 - p) / n)
    k2 = torch.full((n,), 0)  # at 0, both directions land on 1
    assert ((perturb_lsb(k2, pi, 4, gen(1)) == 1).double().mean() - pi).abs() < 0.01


def test_perturb_lsb_reproducible_and_errors():
    k = torch.randint(0, 256, (3, 8, 8), generator=gen(0))
    assert torch.equal(perturb_lsb(k, 0.5, 256, gen(1)), perturb_lsb(k, 0.5, 256, gen(1)))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        perturb_lsb(k, 1.5)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        perturb_lsb(k, -0.1)
    with pytest.raises(TypeError, match="integer"):
        perturb_lsb(k.float(), 0.5)
    with pytest.raises(ValueError, match="expected"):
        perturb_lsb(k, 0.5, num_levels=17)
