"""Frechet distances between Gaussian fits of features.

FD = ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)) (Heusel, Ramsauer, Unterthiner, Nessler and
Hochreiter, "GANs Trained by a Two Time-Scale Update Rule Converge to a Local Nash Equilibrium",
NeurIPS 2017).

Two feature extractors share one small protocol (``name``, ``metric_name``,
``extract(levels, num_levels) -> [N, F]``):

* :class:`InceptionFeatures` (``load_inception``): pytorch-fid's Inception-v3 pool features,
  the standard FID. Needs the optional extra (``pip install hybrids[fid]``) and the weights file
  ``pt_inception-2015-12-05-6726825d.pth`` on disk; nothing is downloaded.
* :class:`DomainClassifier` (``train_domain_classifier``): a small CNN trained by the library
  on a labelled dataset (digits or MNIST). Its penultimate features give a Frechet distance
  reported as "FD-<dataset> classifier", never as FID, since it is not comparable to
  published FIDs.

Caches. Both the trained domain classifier and the feature statistics of dataset splits are
cached on disk, under ``cache_dir`` (default: ``$HYBRIDS_DATA``, else ``~/.cache/hybrids``; the
same default as the data, whatever ``data_dir`` the data were read from):

* ``cache_dir/classifiers/<dataset>_cnn_steps<S>_seed<s>_<key>.pt``, where ``<key>`` hashes the
  content of the train and test splits it was trained and scored on (:func:`data_fingerprint`)
  with every training setting (steps, batch size, learning rate, seed, architecture);
* ``cache_dir/fid_stats/<dataset>_<split>_<extractor name>[_n<N>]_<fingerprint>.npz``, where the
  extractor name of a classifier carries its own key and ``<fingerprint>`` hashes the content of
  the split the statistics were computed from.

So a subset, another copy or an edited version of a dataset (another ``data_dir``, another
``num_examples``) gets its own cache files instead of reusing those of another run; identical
data share them wherever they were read from. The fingerprint is a BLAKE2b hash of the levels
(as uint8 when K <= 256), their shape, K and the labels: one pass over the data (a fraction of a
second for MNIST's 60,000 images). An unreadable cache file is rebuilt, with a warning. Delete
``cache_dir/classifiers`` and ``cache_dir/fid_stats`` to clear the caches; files written before
the caches were keyed by content (names without the key) are no longer read.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import pickle
import warnings
import zipfile
from pathlib import Path
from typing import Protocol

import numpy as np
import scipy.linalg
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hybrids.data import ArrayDataset, bin_centers, check_levels, default_data_dir, load_dataset
from hybrids.io import atomic_torch_save, atomic_write

__all__ = [
    "FID_WEIGHTS_FILE",
    "DomainClassifier",
    "FeatureExtractor",
    "InceptionFeatures",
    "classifier_predict",
    "data_fingerprint",
    "dataset_stats",
    "find_inception_weights",
    "frechet_distance",
    "frechet_distance_to_dataset",
    "gaussian_stats",
    "load_inception",
    "train_domain_classifier",
]

FID_WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
_FID_WEIGHTS_GLOB = "pt_inception-2015-12-05-*.pth"
_FID_WEIGHTS_URL = (
    "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/" + FID_WEIGHTS_FILE
)


# ------------------------------------------------------------------------- Frechet distance
def gaussian_stats(features: np.ndarray | Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased covariance of features.

    Args:
        features: ``[N, F]`` with N >= 2.

    Returns:
        mu ``[F]`` and sigma ``[F, F]`` (float64).
    """
    if isinstance(features, Tensor):
        features = features.detach().cpu().numpy()
    feats = np.asarray(features, dtype=np.float64)
    if feats.ndim != 2 or feats.shape[0] < 2:
        raise ValueError(f"features must be [N, F] with N >= 2, got shape {feats.shape}")
    return feats.mean(axis=0), np.atleast_2d(np.cov(feats, rowvar=False))


def frechet_distance(
    mu1: np.ndarray,
    sigma1: np.ndarray,
    mu2: np.ndarray,
    sigma2: np.ndarray,
    eps: float = 1e-6,
) -> float:
    """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2).

    d^2 = ||mu1 - mu2||^2 + Tr(sigma1) + Tr(sigma2) - 2 Tr((sigma1 sigma2)^(1/2)).

    The matrix square root comes from ``scipy.linalg.sqrtm``. When the product is singular
    enough for the root to be non-finite, ``eps`` is added to both diagonals (the standard
    remedy); imaginary parts from round-off are dropped when the diagonal's are below 1e-3 of
    the trace scale, and a larger imaginary part raises.

    Args:
        mu1, mu2: ``[F]`` means.
        sigma1, sigma2: ``[F, F]`` covariances (symmetric PSD).
        eps: diagonal offset used for a singular product.

    Returns:
        The squared Frechet distance (the quantity reported as FID), as a float.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1 = np.atleast_2d(np.asarray(sigma1, np.float64))
    sigma2 = np.atleast_2d(np.asarray(sigma2, np.float64))
    dim = mu1.shape[0]
    if mu1.shape != (dim,) or mu2.shape != (dim,) or sigma1.shape != (dim, dim) or sigma2.shape != (dim, dim):
        raise ValueError(
            f"inconsistent shapes: mu1 {mu1.shape}, mu2 {mu2.shape}, sigma1 {sigma1.shape}, "
            f"sigma2 {sigma2.shape}; expected [F], [F], [F, F], [F, F]"
        )
    with warnings.catch_warnings():  # singular products are expected (F > N); handled below
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
        covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
        if not np.all(np.isfinite(covmean)):
            offset = eps * np.eye(dim)
            covmean = scipy.linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        imag = np.max(np.abs(np.diagonal(covmean).imag))
        scale = max(1.0, np.abs(np.trace(covmean.real)))
        if imag > 1e-3 * scale:
            raise ValueError(
                f"sqrtm(sigma1 sigma2) has an imaginary diagonal part of {imag:.3g}; the "
                "covariances are not (numerically) positive semi-definite"
            )
        covmean = covmean.real
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))


# ------------------------------------------------------------------------- extractors
class FeatureExtractor(Protocol):
    """What :func:`dataset_stats` needs from a feature network."""

    name: str  # identifies the network in cache file names
    metric_name: str  # how the resulting distance is reported, e.g. "FID"

    def extract(self, levels: Tensor, num_levels: int, batch_size: int = 250) -> np.ndarray:
        """Features ``[N, F]`` of integer images ``[N, C, H, W]`` with ``num_levels`` levels."""


def find_inception_weights(weights_path: str | os.PathLike | None = None) -> Path:
    """Locate pytorch-fid's Inception weights on disk (never downloads).

    Search order: ``weights_path``; ``$HYBRIDS_FID_WEIGHTS``; torch hub's checkpoint cache
    (``torch.hub.get_dir()/checkpoints/pt_inception-2015-12-05-*.pth``).

    Raises:
        FileNotFoundError: with the file name, the places searched and where to get it.
    """
    searched: list[str] = []
    for candidate in (weights_path, os.environ.get("HYBRIDS_FID_WEIGHTS")):
        if candidate:
            path = Path(candidate).expanduser()
            if path.is_file():
                return path
            searched.append(str(path))
    hub = Path(torch.hub.get_dir()) / "checkpoints"
    matches = sorted(hub.glob(_FID_WEIGHTS_GLOB)) if hub.is_dir() else []
    if matches:
        return matches[0]
    searched.append(str(hub / _FID_WEIGHTS_GLOB))
    raise FileNotFoundError(
        f"Inception weights for FID not found (searched: {', '.join(searched)}). Download "
        f"{FID_WEIGHTS_FILE} from {_FID_WEIGHTS_URL} on a machine with internet access and pass "
        f"its path as weights_path, set HYBRIDS_FID_WEIGHTS=/path/to/{FID_WEIGHTS_FILE}, or put "
        f"it in {hub}/."
    )


class InceptionFeatures(nn.Module):
    """pytorch-fid's Inception-v3 (2048-d pool features); build it with :func:`load_inception`."""

    name = "inception"
    metric_name = "FID"

    def __init__(self, network: nn.Module):
        super().__init__()
        self.network = network.eval()

    @torch.no_grad()
    def extract(self, levels: Tensor, num_levels: int, batch_size: int = 250) -> np.ndarray:
        """Pool features ``[N, 2048]`` of ``levels`` ``[N, C, H, W]`` (C = 1 is repeated to 3).

        Levels map to [0, 1] as k / (K - 1); pytorch-fid resizes to 299 x 299 itself.
        """
        check_levels(levels, num_levels)
        device = next(self.network.parameters()).device
        out = []
        for chunk in levels.split(batch_size):
            x = chunk.to(device=device, dtype=torch.float32) / (num_levels - 1)
            if x.shape[1] == 1:
                x = x.expand(-1, 3, -1, -1)
            out.append(self.network(x)[0].flatten(1).cpu().numpy())
        return np.concatenate(out).astype(np.float64)


def load_inception(
    weights_path: str | os.PathLike | None = None, device: str | torch.device = "cpu"
) -> InceptionFeatures:
    """Build the FID Inception network from a LOCAL weights file.

    Args:
        weights_path: path of ``pt_inception-2015-12-05-6726825d.pth`` (see
            :func:`find_inception_weights` for the fallbacks).
        device: where to put the network.

    Raises:
        FileNotFoundError: the weights file is absent (the message says where to put it).
        ImportError: pytorch-fid is not installed (``pip install hybrids[fid]``).
    """
    path = find_inception_weights(weights_path)
    try:
        from pytorch_fid import inception as fid_inception
    except ImportError as err:
        raise ImportError(
            "FID needs the optional package pytorch-fid (and torchvision): run "
            "`pip install hybrids[fid]` (or `pip install pytorch-fid torchvision`)"
        ) from err
    if not hasattr(fid_inception, "load_state_dict_from_url"):
        raise ImportError(
            "this pytorch-fid version does not load its weights through "
            "pytorch_fid.inception.load_state_dict_from_url; install pytorch-fid>=0.3"
        )

    def _local_weights(*_args, **_kwargs):
        return torch.load(path, map_location="cpu", weights_only=True)

    # pytorch-fid fetches its weights by URL; serve them from the local file instead.
    with _patched(fid_inception, "load_state_dict_from_url", _local_weights):
        network = fid_inception.InceptionV3([fid_inception.InceptionV3.BLOCK_INDEX_BY_DIM[2048]])
    return InceptionFeatures(network).to(device)


@contextlib.contextmanager
def _patched(module, attribute: str, value):
    original = getattr(module, attribute)
    setattr(module, attribute, value)
    try:
        yield
    finally:
        setattr(module, attribute, original)


# ------------------------------------------------------------------------- cache keys
_FINGERPRINT_CHARS = 16
# Architecture version of DomainClassifier: part of the classifier cache key (bump it when the
# network changes, so that old weights are not loaded into a new architecture).
_CLASSIFIER_VERSION = 1
# What reading a truncated or foreign cache file raises.
_CACHE_READ_ERRORS = (OSError, EOFError, ValueError, KeyError, RuntimeError, zipfile.BadZipFile,
                      pickle.UnpicklingError)


def data_fingerprint(data: ArrayDataset) -> str:
    """A short content hash of a dataset split, the key of the caches built from it.

    BLAKE2b (8 bytes, 16 hex digits) of the data's shape, dtype and number of levels, the data
    (integer levels as uint8 when K <= 256, which the loaders have checked to lie in 0..K-1) and
    the labels. Identical data give the same fingerprint wherever they were read from; a
    subset or any changed value gives another.
    """
    values = data.data.detach().cpu()
    h = hashlib.blake2b(digest_size=_FINGERPRINT_CHARS // 2)
    h.update(repr((tuple(values.shape), str(values.dtype), data.num_levels)).encode())
    if data.num_levels is not None and data.num_levels <= 256 and not values.is_floating_point():
        values = values.to(torch.uint8)
    h.update(np.ascontiguousarray(values.numpy()).data)
    if data.labels is None:
        h.update(b"no labels")
    else:
        h.update(b"labels")
        h.update(np.ascontiguousarray(data.labels.detach().cpu().to(torch.int64).numpy()).data)
    return h.hexdigest()


def _settings_key(*parts: object) -> str:
    """Hash of the ``repr`` of ``parts`` (16 hex digits)."""
    return hashlib.blake2b(repr(parts).encode(), digest_size=_FINGERPRINT_CHARS // 2).hexdigest()


# ------------------------------------------------------------------------- domain classifier
class DomainClassifier(nn.Module):
    """Small CNN classifier whose penultimate layer is a domain-specific feature space.

    conv3x3(C->32) - ReLU - conv3x3/2(32->64) - ReLU - conv3x3/2(64->64) - ReLU - mean pool to
    2 x 2 - Linear(256->F) - ReLU [features, F = ``feature_dim``] - Linear(F->classes).
    Inputs are integer levels, mapped to bin centres (2k + 1)/K - 1.

    Attributes:
        dataset: the training dataset's name; ``metric_name`` is "FD-<dataset> classifier".
        test_accuracy: accuracy on the dataset's test split (set by training or loading).
    """

    def __init__(
        self,
        dataset: str,
        image_shape: tuple[int, int, int],
        num_levels: int,
        num_classes: int = 10,
        feature_dim: int = 128,
        tag: str = "",
    ):
        super().__init__()
        self.dataset, self.image_shape, self.num_levels = dataset, tuple(image_shape), num_levels
        self.name = f"{dataset}-classifier{tag}"
        self.metric_name = f"FD-{dataset} classifier"
        self.test_accuracy = float("nan")
        channels = image_shape[0]
        self.trunk = nn.Sequential(
            nn.Conv2d(channels, 32, 3, padding=1), nn.ReLU(),
            nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(64, 64, 3, stride=2, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(2), nn.Flatten(),
            nn.Linear(64 * 4, feature_dim), nn.ReLU(),
        )
        self.head = nn.Linear(feature_dim, num_classes)

    def _inputs(self, levels: Tensor) -> Tensor:
        check_levels(levels, self.num_levels)
        if tuple(levels.shape[1:]) != self.image_shape:
            raise ValueError(
                f"{self.name} takes images {self.image_shape}, got batch shape {tuple(levels.shape)}"
            )
        device = next(self.parameters()).device
        return bin_centers(levels.to(device), self.num_levels)

    def features(self, levels: Tensor) -> Tensor:
        """Penultimate features ``[B, F]`` of integer images ``[B, C, H, W]``."""
        return self.trunk(self._inputs(levels))

    def forward(self, levels: Tensor) -> Tensor:
        """Class logits ``[B, num_classes]``."""
        return self.head(self.features(levels))

    @torch.no_grad()
    def extract(self, levels: Tensor, num_levels: int, batch_size: int = 250) -> np.ndarray:
        """Features ``[N, F]`` as float64 numpy (the :class:`FeatureExtractor` protocol)."""
        if num_levels != self.num_levels:
            raise ValueError(f"{self.name} was trained on K={self.num_levels} levels, got K={num_levels}")
        was_training = self.training
        self.eval()
        try:
            chunks = [self.features(c).cpu().numpy() for c in levels.split(batch_size)]
            return np.concatenate(chunks).astype(np.float64)
        finally:
            self.train(was_training)


@torch.no_grad()
def classifier_predict(classifier: DomainClassifier, levels: Tensor, batch_size: int = 500) -> Tensor:
    """Predicted classes ``[N]`` (int64, on CPU) of integer images ``[N, C, H, W]``.

    E.g. ``torch.bincount(classifier_predict(clf, samples), minlength=10)`` counts the digit
    classes that a sampler's chain visited.
    """
    was_training = classifier.training
    classifier.eval()
    try:
        return torch.cat([classifier(c).argmax(dim=1).cpu() for c in levels.split(batch_size)])
    finally:
        classifier.train(was_training)


def train_domain_classifier(
    dataset_name: str = "digits",
    data_dir: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    *,
    steps: int = 500,
    batch_size: int = 64,
    lr: float = 2e-3,
    seed: int = 0,
    device: str | torch.device = "cpu",
    force: bool = False,
) -> DomainClassifier:
    """Train (or load from the cache) the feature classifier for a labelled image dataset.

    Adam on cross-entropy, minibatches drawn with replacement from the train split. The
    trained weights are cached at ``cache_dir/classifiers/<dataset>_cnn_steps<S>_seed<s>_<key>.pt``
    (state_dict and settings, written atomically) and reused unless ``force``; ``<key>`` hashes
    the content of the train and test splits (:func:`data_fingerprint`) and every training
    setting, so that a classifier trained on other data or settings is never reused (see the
    module docstring). The classifier's ``name`` carries the key too, so the dataset statistics
    computed in its features are cached per classifier.

    Args:
        dataset_name: a labelled image dataset ('digits', 'mnist', 'cifar10').
        data_dir: where on-disk datasets live (see ``load_dataset``).
        cache_dir: where to cache the classifier (default: the data directory,
            ``$HYBRIDS_DATA`` or ``~/.cache/hybrids``).
        steps, batch_size, lr, seed: training settings.
        device: training device.
        force: retrain even when a cached classifier exists.

    Returns:
        The classifier in eval mode, with ``test_accuracy`` set.
    """
    if steps < 1 or batch_size < 1 or not lr > 0:
        raise ValueError(f"need steps >= 1, batch_size >= 1, lr > 0; got {steps}, {batch_size}, {lr}")
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_data_dir()
    train = load_dataset(dataset_name, "train", data_dir, num_examples=None)  # whole split
    if train.labels is None or train.num_levels is None:
        raise ValueError(f"{dataset_name!r} is not a labelled image dataset; use 'digits' or 'mnist'")
    test = load_dataset(dataset_name, "test", data_dir, num_examples=None)
    num_classes = int(train.labels.max()) + 1
    key = _settings_key("DomainClassifier", _CLASSIFIER_VERSION, data_fingerprint(train), data_fingerprint(test),
                        num_classes, steps, batch_size, float(lr), seed)
    path = cache / "classifiers" / f"{dataset_name}_cnn_steps{steps}_seed{seed}_{key}.pt"
    config = {
        "dataset": dataset_name,
        "image_shape": train.shape,
        "num_levels": train.num_levels,
        "num_classes": num_classes,
        "tag": f"-steps{steps}-seed{seed}-{key}",
    }
    if path.is_file() and not force:
        try:
            saved = torch.load(path, map_location="cpu", weights_only=True)
            model = DomainClassifier(**saved["config"])
            model.load_state_dict(saved["state_dict"])
            model.test_accuracy = float(saved["test_accuracy"])
            return model.to(device).eval()
        except _CACHE_READ_ERRORS as err:
            warnings.warn(f"cached classifier {path} could not be read ({type(err).__name__}: {err}); "
                          "training it again", stacklevel=2)

    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):  # seeded initialisation; caller's RNG untouched
        torch.manual_seed(seed)
        model = DomainClassifier(**config)
    model.to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    labels = train.labels.to(device)
    for _ in range(steps):
        idx = torch.randint(0, len(train), (batch_size,), generator=generator)
        loss = F.cross_entropy(model(train.data[idx]), labels[idx.to(device)])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    model.eval()
    model.test_accuracy = float((classifier_predict(model, test.data) == test.labels).double().mean())
    state = {k: v.cpu() for k, v in model.state_dict().items()}
    atomic_torch_save({"config": config, "state_dict": state, "test_accuracy": model.test_accuracy}, path)
    return model


# ------------------------------------------------------------------------- cached statistics
def dataset_stats(
    name: str,
    split: str,
    extractor: FeatureExtractor,
    cache_dir: str | os.PathLike | None = None,
    *,
    data_dir: str | os.PathLike | None = None,
    num_examples: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Feature mean and covariance of a dataset split, cached as npz.

    Cache file:
    ``cache_dir/fid_stats/<name>_<split>_<extractor.name>[_n<num_examples>]_<fingerprint>.npz``
    with keys ``mu``, ``sigma``, ``num_examples``, where ``<fingerprint>`` is
    :func:`data_fingerprint` of the split as loaded (so other data never reuse these
    statistics); written atomically (``hybrids.io.atomic_write``) so that readers never see a
    partial file. The split is loaded on every call, to compute its fingerprint.

    Returns:
        mu ``[F]``, sigma ``[F, F]``.
    """
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_data_dir()
    data = load_dataset(name, split, data_dir, num_examples=num_examples)
    if data.num_levels is None:
        raise ValueError(f"dataset_stats needs an image dataset, {name!r} is continuous")
    suffix = "" if num_examples is None else f"_n{num_examples}"
    path = cache / "fid_stats" / f"{name}_{split}_{extractor.name}{suffix}_{data_fingerprint(data)}.npz"
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as f:
                return f["mu"], f["sigma"]
        except _CACHE_READ_ERRORS as err:
            warnings.warn(f"cached statistics {path} could not be read ({type(err).__name__}: {err}); "
                          "computing them again", stacklevel=2)
    mu, sigma = gaussian_stats(extractor.extract(data.data, data.num_levels))
    atomic_write(path, lambda f: np.savez(f, mu=mu, sigma=sigma, num_examples=len(data)))
    return mu, sigma


def frechet_distance_to_dataset(
    samples: Tensor,
    num_levels: int,
    extractor: FeatureExtractor,
    dataset_name: str,
    split: str = "train",
    cache_dir: str | os.PathLike | None = None,
    *,
    data_dir: str | os.PathLike | None = None,
) -> dict[str, float]:
    """Frechet distance between samples and a dataset split in ``extractor``'s feature space.

    Args:
        samples: integer levels ``[N, C, H, W]``, N >= 2.

    Returns:
        ``{extractor.metric_name: distance}``, e.g. ``{"FID": ...}`` or
        ``{"FD-digits classifier": ...}``.
    """
    mu_s, sigma_s = gaussian_stats(extractor.extract(samples, num_levels))
    mu_d, sigma_d = dataset_stats(dataset_name, split, extractor, cache_dir, data_dir=data_dir)
    return {extractor.metric_name: frechet_distance(mu_s, sigma_s, mu_d, sigma_d)}
