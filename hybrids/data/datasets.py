"""Datasets as in-memory integer arrays, read from standard on-disk formats.

``load_dataset(name, split)`` returns an :class:`ArrayDataset`. Images are int64 levels
``[N, C, H, W]`` in {0, ..., K-1}; 2-D toys are float32 ``[N, 2]`` with ``num_levels=None``.

Files are read from ``data_dir`` (default ``$HYBRIDS_DATA``, else ``~/.cache/hybrids``):

* ``digits``: scikit-learn's embedded 8x8 digits (UCI optdigits test set, 1797 images, levels
  0..16, K = 17). Deterministic split: the first 1500 images are 'train', the last 297 'test'.
* ``mnist``: ``mnist.npz`` (keys x_train, y_train, x_test, y_test; uint8) in ``data_dir`` or
  ``data_dir/mnist``; or the four IDX files ``train-images-idx3-ubyte``,
  ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte`` (each
  optionally ``.gz``) in ``data_dir`` or ``data_dir/mnist``.
* ``cifar10``: the python batches ``cifar-10-batches-py/data_batch_1..5`` and ``test_batch``
  in ``data_dir`` or ``data_dir/cifar10``.
* ``imagenet32`` / ``imagenet64``: ``data_dir/imagenet32/train.npz`` and ``test.npz`` (likewise
  ``imagenet64/``) with key ``data`` as ``[N, 3*S*S]`` (channel-major, as in CIFAR and the
  official downsampled-ImageNet batches), ``[N, S, S, 3]`` (NHWC) or ``[N, 3, S, S]``, and
  optional ``labels``. The official npz batches of Chrabaszcz et al. (2017)
  (``train_data_batch_1.npz`` ... and ``val_data.npz``, same keys, labels 1..1000 kept as
  stored) are read when ``train.npz`` / ``test.npz`` are absent.
* toys ('checkerboard', '8gaussians', 'rings', 'moons', 'swissroll', 'pinwheel'): generated,
  50_000 train points with seed 0 and 10_000 test points with seed 1 by default.

The pickled CIFAR-10 batches are unpickled: only read files you trust. npz files are read with
``allow_pickle=False``.

Files are validated as they are read, and every problem is a ``ValueError`` naming the file:
an unreadable file (truncated, corrupt, not an npz archive or IDX file) with the keys or layout
expected; missing keys; images that are not integer levels (e.g. float arrays scaled to [0, 1],
with the conversion to uint8 levels); levels outside 0..K-1; image shapes other than the
dataset's; labels that are not integers or whose count differs from the images'.
"""
from __future__ import annotations

import dataclasses
import gzip
import os
import pickle
import zipfile
import zlib
from pathlib import Path
from typing import Sequence

import gin
import numpy as np
import torch
from torch import Tensor

from hybrids.data.toys import TOY_NAMES, sample_toy

__all__ = [
    "ArrayDataset",
    "DATASETS",
    "IMAGE_DATASETS",
    "default_data_dir",
    "load_dataset",
    "read_idx",
]

IMAGE_DATASETS: tuple[str, ...] = ("digits", "mnist", "cifar10", "imagenet32", "imagenet64")
DATASETS: tuple[str, ...] = IMAGE_DATASETS + TOY_NAMES
SPLITS = ("train", "test")

DIGITS_NUM_TRAIN = 1500
TOY_SIZES = {"train": 50_000, "test": 10_000}
TOY_SEEDS = {"train": 0, "test": 1}

_MNIST_IDX = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_WHERE_TO_GET = {
    "mnist": "https://storage.googleapis.com/tensorflow/tf-keras-datasets/mnist.npz (npz) or "
    "http://yann.lecun.com/exdb/mnist/ (IDX files); licence CC BY-SA 3.0",
    "cifar10": "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz (extract it; it "
    "contains cifar-10-batches-py/)",
    "imagenet": "https://image-net.org/download-images.php ('Downsampled ImageNet' 32x32 / 64x64, "
    "Chrabaszcz et al. 2017; needs an ImageNet account), then concatenate to train.npz / test.npz "
    "or keep the official train_data_batch_*.npz / val_data.npz",
}


@dataclasses.dataclass(frozen=True)
class ArrayDataset:
    """A whole dataset held in memory.

    Attributes:
        name: dataset name (one of ``DATASETS``).
        data: int64 levels ``[N, C, H, W]`` (images) or float32 ``[N, 2]`` (toys).
        labels: int64 ``[N]`` class labels, or None.
        num_levels: K for integer data, None for continuous data.
        data_dir: the directory the files were read from (None for embedded and generated
            data), so that code given a split can load the dataset's other split.
    """

    name: str
    data: Tensor
    labels: Tensor | None
    num_levels: int | None
    data_dir: str | None = None

    def __post_init__(self) -> None:
        if self.labels is not None and len(self.labels) != len(self.data):
            raise ValueError(
                f"{self.name}: {len(self.data)} examples but {len(self.labels)} labels"
            )

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of one example, e.g. (1, 28, 28) or (2,)."""
        return tuple(self.data.shape[1:])

    def __len__(self) -> int:
        return int(self.data.shape[0])


def default_data_dir() -> Path:
    """``$HYBRIDS_DATA`` if set, else ``~/.cache/hybrids``."""
    env = os.environ.get("HYBRIDS_DATA")
    return Path(env).expanduser() if env else Path("~/.cache/hybrids").expanduser()


def _missing(name: str, expected: list[str], searched: list[Path], source: str) -> FileNotFoundError:
    dirs = ", ".join(str(d) for d in searched)
    files = "; ".join(expected)
    return FileNotFoundError(
        f"dataset {name!r} not found. Expected {files} in one of: {dirs}. Get it from {source}. "
        "Point the library at the directory holding it with --data_dir=DIR or the environment "
        "variable HYBRIDS_DATA (default ~/.cache/hybrids)."
    )


# ---------------------------------------------------------------------------------- IDX files
_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (LeCun's MNIST format), gzip-compressed when the name ends in .gz.

    Layout: two zero bytes, a type byte (0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32,
    0x0D float32, 0x0E float64), a byte with the number of dimensions n, n big-endian uint32
    sizes, then the values in row-major order, big-endian.

    Returns:
        array of the stored shape, in native byte order.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise
    except (OSError, EOFError, zlib.error) as err:  # gzip.BadGzipFile is an OSError
        raise ValueError(
            f"{path} could not be read ({type(err).__name__}: {err}); the file is truncated or "
            "corrupt (or not gzip data despite the .gz name). Download it again."
        ) from err
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(f"{path} is not an IDX file (bad magic number {raw[:4]!r})")
    dtype, ndim = _IDX_DTYPES[raw[2]], raw[3]
    header = 4 + 4 * ndim
    shape = tuple(int(s) for s in np.frombuffer(raw[4:header], dtype=">u4"))
    count = int(np.prod(shape)) if shape else 1
    if len(raw) != header + count * dtype.itemsize:
        raise ValueError(
            f"{path}: header promises shape {shape} of {dtype} ({count * dtype.itemsize} bytes) "
            f"but {len(raw) - header} data bytes follow"
        )
    data = np.frombuffer(raw[header:], dtype=dtype).reshape(shape)
    return data.astype(dtype.newbyteorder("="))


def _find_idx(directory: Path, stem: str) -> Path | None:
    for candidate in (directory / stem, directory / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


# ---------------------------------------------------------------------------------- validation
# What np.load / NpzFile.__getitem__ raise for a truncated, corrupt or pickled file.
_NPZ_ERRORS = (zipfile.BadZipFile, ValueError, OSError, EOFError, zlib.error)
# What unpickling a truncated or foreign file raises.
_PICKLE_ERRORS = (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError,
                  IndexError, KeyError, OverflowError)


def _npz_problem(err: BaseException) -> str:
    if isinstance(err, zipfile.BadZipFile):
        return "it is not a valid npz (zip) archive: truncated, corrupt or another format"
    if isinstance(err, EOFError):
        return "it is empty or ends early (truncated)"
    if isinstance(err, ValueError) and "pickle" in str(err).lower():
        return ("it holds pickled Python objects (or is not an npz file at all), which hybrids does "
                "not load; store plain numeric arrays")
    return f"{type(err).__name__}: {err}"


def _read_npz(path: Path, keys: Sequence[str], optional: Sequence[str] = ()) -> dict[str, np.ndarray]:
    """The arrays ``keys`` (and those of ``optional`` that are present) of an npz archive.

    Read with ``allow_pickle=False``.

    Raises:
        ValueError: the file cannot be read as an npz archive, or a key is missing; the message
            names the file, the keys expected and the keys found.
    """
    expected = ", ".join(keys) + (f" (optional: {', '.join(optional)})" if optional else "")

    def unreadable(err: BaseException) -> ValueError:
        return ValueError(
            f"{path} could not be read as an npz archive with keys {expected}: {_npz_problem(err)}. "
            f"Download or write it again (np.savez(path, {keys[0]}=array, ...) with uint8 images)."
        )

    try:
        archive = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise
    except _NPZ_ERRORS as err:
        raise unreadable(err) from err
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise ValueError(
            f"{path} holds a single array (.npy format), not an npz archive with keys {expected}; "
            f"write it with np.savez(path, {keys[0]}=array, ...)."
        )
    with archive:
        found = list(archive.files)
        missing = [k for k in keys if k not in found]
        if missing:
            raise ValueError(
                f"{path} has no key {', '.join(repr(k) for k in missing)}; expected keys {expected}, "
                f"found {', '.join(found) if found else 'none'}."
            )
        try:
            return {k: archive[k] for k in (*keys, *(k for k in optional if k in found))}
        except _NPZ_ERRORS as err:
            raise unreadable(err) from err


def _check_level_array(images: np.ndarray, where: str, num_levels: int) -> None:
    """Raise ``ValueError`` unless ``images`` holds integer levels in {0, ..., num_levels - 1}."""
    top = num_levels - 1
    if images.dtype == np.bool_ or not np.issubdtype(images.dtype, np.integer):
        found, hint = f"dtype {images.dtype}", ""
        if np.issubdtype(images.dtype, np.floating) and images.size:
            finite = images[np.isfinite(images)]
            if finite.size:
                lo, hi = float(finite.min()), float(finite.max())
                found += f" with values in [{lo:g}, {hi:g}]"
                if 0 <= lo and hi <= 1:
                    hint = (f" The values look scaled to [0, 1]: multiply by {top} and cast, e.g. "
                            f"np.rint(x * {top}).astype(np.uint8).")
                elif 0 <= lo and hi <= top and np.array_equal(finite, np.rint(finite)):
                    hint = " The values are whole numbers: cast them, e.g. x.astype(np.uint8)."
            if finite.size < images.size:
                found += f" and {images.size - finite.size} NaN or infinite values"
        raise ValueError(
            f"{where} holds {found}; expected integer pixel levels 0..{top} (uint8).{hint}"
        )
    if images.size == 0:
        raise ValueError(f"{where} holds no images (shape {images.shape}).")
    info = np.iinfo(images.dtype)
    if info.min >= 0 and info.max <= top:  # e.g. uint8 with K = 256: nothing to scan
        return
    lo, hi = int(images.min()), int(images.max())
    if lo < 0 or hi > top:
        raise ValueError(
            f"{where} holds pixel values in [{lo}, {hi}]; expected integer levels 0..{top} "
            f"(K = {num_levels} levels, uint8 for 8-bit images)."
        )


def _check_labels(labels: np.ndarray, num_images: int, where: str) -> np.ndarray:
    """Integer class labels ``[N]`` matching ``num_images`` (``[N, 1]`` is flattened)."""
    labels = np.asarray(labels)
    if labels.dtype == np.bool_ or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"{where} holds labels of dtype {labels.dtype}; expected integer class labels [N] "
            "(cast whole-number labels with labels.astype(np.int64))."
        )
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1:
        raise ValueError(
            f"{where}: labels must be [N] (one integer class per image), got shape {labels.shape} "
            "(one-hot labels: labels.argmax(1))."
        )
    if len(labels) != num_images:
        raise ValueError(
            f"{where}: {num_images} images but {len(labels)} labels; they must have the same length."
        )
    return labels


# ---------------------------------------------------------------------------------- loaders
def _as_levels(images: np.ndarray) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(images).astype(np.int64))


def _as_labels(labels: np.ndarray | None) -> Tensor | None:
    return None if labels is None else torch.from_numpy(np.asarray(labels).astype(np.int64).ravel())


def _load_digits(split: str) -> tuple[Tensor, Tensor, int]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.rint(bunch.images).astype(np.int64)[:, None]  # [1797, 1, 8, 8], 0..16
    sl = slice(0, DIGITS_NUM_TRAIN) if split == "train" else slice(DIGITS_NUM_TRAIN, None)
    return _as_levels(images[sl]), _as_labels(bunch.target[sl]), 17


def _load_mnist(split: str, data_dir: Path) -> tuple[Tensor, Tensor, int]:
    dirs = [data_dir, data_dir / "mnist"]
    for d in dirs:
        npz = d / "mnist.npz"
        if npz.is_file():
            suffix = "train" if split == "train" else "test"
            arrays = _read_npz(npz, [f"x_{suffix}", f"y_{suffix}"])
            images, labels = arrays[f"x_{suffix}"], arrays[f"y_{suffix}"]
            image_where, label_where = f"{npz} key 'x_{suffix}'", f"{npz} key 'y_{suffix}'"
            break
        image_file = _find_idx(d, _MNIST_IDX[split][0])
        label_file = _find_idx(d, _MNIST_IDX[split][1])
        if image_file is not None and label_file is not None:
            images, labels = read_idx(image_file), read_idx(label_file)
            image_where, label_where = str(image_file), str(label_file)
            break
    else:
        expected = ["mnist.npz (keys x_train, y_train, x_test, y_test)",
                    "or the IDX files " + ", ".join(_MNIST_IDX[split]) + " (optionally .gz)"]
        raise _missing("mnist", expected, dirs, _WHERE_TO_GET["mnist"])
    if images.ndim == 4 and images.shape[1] == 1:
        images = images[:, 0]
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        raise ValueError(
            f"{image_where}: MNIST images must be [N, 28, 28] or [N, 1, 28, 28], got shape {images.shape}"
        )
    _check_level_array(images, image_where, 256)
    labels = _check_labels(labels, len(images), label_where)
    return _as_levels(images[:, None]), _as_labels(labels), 256


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images ``[N, 3, 32, 32]`` and labels ``[N]`` of one pickled CIFAR-10 batch, validated."""
    try:
        with open(path, "rb") as f:
            batch = pickle.load(f, encoding="bytes")
    except _PICKLE_ERRORS as err:
        raise ValueError(
            f"{path} could not be read as a CIFAR-10 python batch (a pickled dict with keys b'data' "
            f"and b'labels'): {type(err).__name__}: {err}. The file is truncated or corrupt; extract "
            "cifar-10-python.tar.gz again."
        ) from err
    found = (", ".join(sorted(map(repr, batch))) or "no keys") if isinstance(batch, dict) else type(batch).__name__
    keys = {}
    for key in ("data", "labels"):
        present = [k for k in (key.encode(), key) if isinstance(batch, dict) and k in batch]
        if not present:
            raise ValueError(
                f"{path} is not a CIFAR-10 python batch: expected a dict with keys b'data' and "
                f"b'labels', found {found}."
            )
        keys[key] = present[0]
    data = np.asarray(batch[keys["data"]])
    where = f"{path} key {keys['data']!r}"
    _check_level_array(data, where, 256)
    if data.ndim == 2 and data.shape[1] == 3 * 32 * 32:
        data = data.reshape(-1, 3, 32, 32)
    elif not (data.ndim == 4 and data.shape[1:] == (3, 32, 32)):
        raise ValueError(f"{where}: CIFAR-10 images must be [N, 3072] or [N, 3, 32, 32], got shape {data.shape}")
    labels = _check_labels(np.asarray(batch[keys["labels"]]), len(data), f"{path} key {keys['labels']!r}")
    return data.astype(np.uint8), labels


def _load_cifar10(split: str, data_dir: Path) -> tuple[Tensor, Tensor, int]:
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    dirs = [data_dir / "cifar-10-batches-py", data_dir / "cifar10" / "cifar-10-batches-py"]
    for d in dirs:
        if all((d / n).is_file() for n in names):
            break
    else:
        expected = ["cifar-10-batches-py/" + n for n in names]
        raise _missing("cifar10", expected, [data_dir, data_dir / "cifar10"], _WHERE_TO_GET["cifar10"])
    images, labels = [], []
    for n in names:
        data, batch_labels = _read_cifar_batch(d / n)
        images.append(data)
        labels.append(batch_labels)
    return _as_levels(np.concatenate(images)), _as_labels(np.concatenate(labels)), 256


def _imagenet_layout(data: np.ndarray, size: int, path: Path) -> np.ndarray:
    """Bring ``data`` to [N, 3, S, S] from flat channel-major, NHWC or NCHW layouts."""
    if data.ndim == 2 and data.shape[1] == 3 * size * size:
        return data.reshape(-1, 3, size, size)
    if data.ndim == 4 and data.shape[1:] == (size, size, 3):
        return data.transpose(0, 3, 1, 2)
    if data.ndim == 4 and data.shape[1:] == (3, size, size):
        return data
    raise ValueError(
        f"{path}: key 'data' has shape {data.shape}; expected [N, {3 * size * size}], "
        f"[N, {size}, {size}, 3] or [N, 3, {size}, {size}]"
    )


def _load_imagenet(name: str, split: str, data_dir: Path) -> tuple[Tensor, Tensor | None, int]:
    size = 32 if name == "imagenet32" else 64
    d = data_dir / name
    single = d / f"{split}.npz"
    if single.is_file():
        files = [single]
    elif split == "train":
        files = sorted(d.glob("train_data_batch_*.npz"), key=lambda p: int(p.stem.rsplit("_", 1)[1]))
    else:
        files = [d / "val_data.npz"] if (d / "val_data.npz").is_file() else []
    if not files:
        official = "train_data_batch_*.npz" if split == "train" else "val_data.npz"
        expected = [f"{name}/{split}.npz (key 'data', optional 'labels')", f"or {name}/{official}"]
        raise _missing(name, expected, [d], _WHERE_TO_GET["imagenet"])
    images, labels = [], []
    for path in files:
        arrays = _read_npz(path, ["data"], ["labels"])
        data = _imagenet_layout(arrays["data"], size, path)
        _check_level_array(data, f"{path} key 'data'", 256)
        images.append(data)
        labels.append(_check_labels(arrays["labels"], len(data), f"{path} key 'labels'")
                      if "labels" in arrays else None)
    label_tensor = None if any(lab is None for lab in labels) else _as_labels(np.concatenate(labels))
    return _as_levels(np.concatenate(images)), label_tensor, 256


@gin.configurable(module="hybrids.data", denylist=["data_dir"])
def load_dataset(
    name: str,
    split: str = "train",
    data_dir: str | os.PathLike | None = None,
    *,
    num_examples: int | None = None,
    seed: int | None = None,
) -> ArrayDataset:
    """Load a dataset split into memory.

    Args:
        name: one of ``DATASETS``.
        split: 'train' or 'test'.
        data_dir: directory holding the on-disk datasets (default ``$HYBRIDS_DATA`` or
            ``~/.cache/hybrids``); unused for 'digits' and the toys.
        num_examples: keep only the first ``num_examples`` examples; for toys, the number of
            points generated (default 50_000 train, 10_000 test).
        seed: toys only: generator seed (default 0 for train, 1 for test).

    Returns:
        :class:`ArrayDataset` (see the module docstring for each dataset's layout and files).

    Raises:
        ValueError: unknown name or split, a bad ``num_examples``, or a file that is unreadable
            or holds the wrong content (see the module docstring; the message names the file).
        FileNotFoundError: the files of an on-disk dataset are missing (the message names them).
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; use 'train' or 'test'")
    if num_examples is not None and (isinstance(num_examples, bool)
                                     or not isinstance(num_examples, int) or num_examples < 1):
        raise ValueError(f"num_examples must be a positive int or None, got {num_examples!r}")
    if name in TOY_NAMES:
        n = TOY_SIZES[split] if num_examples is None else num_examples
        generator = torch.Generator().manual_seed(TOY_SEEDS[split] if seed is None else seed)
        return ArrayDataset(name, sample_toy(name, n, generator), None, None)
    if seed is not None:
        raise ValueError(f"seed applies to generated toy datasets only, not to {name!r}")
    root = default_data_dir() if data_dir is None else Path(data_dir).expanduser()
    if name == "digits":
        data, labels, num_levels = _load_digits(split)
    elif name == "mnist":
        data, labels, num_levels = _load_mnist(split, root)
    elif name == "cifar10":
        data, labels, num_levels = _load_cifar10(split, root)
    else:
        data, labels, num_levels = _load_imagenet(name, split, root)
    if num_examples is not None:
        data = data[:num_examples]
        labels = None if labels is None else labels[:num_examples]
    if int(data.min()) < 0 or int(data.max()) > num_levels - 1:
        raise ValueError(
            f"{name}: pixel values in [{int(data.min())}, {int(data.max())}], "
            f"expected [0, {num_levels - 1}]"
        )
    on_disk = name not in ("digits",)
    return ArrayDataset(name, data, labels, num_levels, str(root) if on_disk else None)
