"""Files a run writes: atomic writes, JSON / JSON-lines, PNG image grids and scatter plots.

Every file that a later run reads back (checkpoints, ``results.json``) is written atomically: the
bytes go to a temporary file in the destination's directory, which is then renamed over the
destination with ``os.replace`` (atomic on POSIX and Windows for paths on one file system). A run
killed mid-write therefore leaves either the old file or the new one, never a partial file.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import IO, Any, Callable

import numpy as np
import torch
from torch import Tensor

PathLike = str | os.PathLike


def _umask() -> int:
    """The process umask (read by setting and restoring it)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: PathLike, write_fn: Callable[[IO[bytes]], None]) -> Path:
    """Write a file atomically: ``write_fn`` fills a temporary file that replaces ``path``.

    Args:
        path: destination; its parent directory is created if missing.
        write_fn: called with a binary file object open for writing.

    Returns:
        The destination path.

    Raises:
        Whatever ``write_fn`` raises; the temporary file is removed first and ``path`` is left
        as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write_fn(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp_name, 0o666 & ~_umask())  # mkstemp creates 0600; give the usual permissions
        os.replace(tmp_name, path)
    except BaseException:
        if os.path.exists(tmp_name):
            os.remove(tmp_name)
        raise
    return path


def atomic_write_text(path: PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def atomic_torch_save(obj: Any, path: PathLike) -> Path:
    """``torch.save(obj)`` to ``path`` atomically (used for checkpoints)."""
    return atomic_write(path, lambda f: torch.save(obj, f))


def to_jsonable(value: Any) -> Any:
    """Convert tensors, numpy values and tuples to plain JSON types; non-finite floats to str.

    JSON has no NaN or infinity; they are written as the strings ``"nan"``, ``"inf"``, ``"-inf"``
    so that a file stays standard JSON.
    """
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, Tensor):
        return to_jsonable(value.detach().cpu().tolist())
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist())
    if isinstance(value, np.generic):
        return to_jsonable(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(
        f"cannot write a value of type {type(value).__name__} as JSON; hooks must return "
        "floats, ints, strings, lists, dicts or tensors."
    )


def flatten_results(results: dict[str, Any], prefix: str = "", sep: str = ".") -> dict[str, Any]:
    """Scalar leaves of nested results as ``{"<hook key><sep><key>...": value}``.

    Numbers, strings, booleans and None are kept; lists are left out. ``results.json`` keys are
    flattened with ``"."`` for tables (``pi_perturbation_eval.bpd.0.5``) and with ``"/"`` for
    TensorBoard tags.
    """
    flat: dict[str, Any] = {}
    for key, value in results.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten_results(value, name + sep, sep))
        elif isinstance(value, (int, float, str, bool)) or value is None:
            flat[name] = value
    return flat


def write_json(path: PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON to ``path`` atomically (see :func:`to_jsonable`)."""
    return atomic_write_text(path, json.dumps(to_jsonable(obj), indent=2, sort_keys=True) + "\n")


def read_json(path: PathLike) -> Any:
    """Read a JSON file."""
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def append_jsonl(path: PathLike, record: dict[str, Any]) -> None:
    """Append one JSON object as a line to ``path`` (created if missing)."""
    line = json.dumps(to_jsonable(record), sort_keys=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(line + "\n")


def read_jsonl(path: PathLike) -> list[dict[str, Any]]:
    """Read every JSON line of ``path``; an absent file gives an empty list."""
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def truncate_jsonl(path: PathLike, keep: Callable[[dict[str, Any]], bool]) -> None:
    """Rewrite ``path`` atomically with only the records for which ``keep`` is true."""
    if not os.path.exists(path):
        return
    records = [r for r in read_jsonl(path) if keep(r)]
    atomic_write_text(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in records))


def levels_to_uint8(k: Tensor, num_levels: int) -> np.ndarray:
    """Map integer levels {0..K-1} to 8-bit intensities round(255 k / (K - 1)).

    Args:
        k: integer levels, any shape.
        num_levels: K >= 2.

    Returns:
        ``uint8`` numpy array shaped like ``k``.
    """
    if num_levels < 2:
        raise ValueError(f"num_levels must be >= 2 to draw an image; got {num_levels}.")
    if k.dtype.is_floating_point or k.dtype == torch.bool:
        raise TypeError(f"image samples must be integer levels; got dtype {k.dtype}.")
    k = k.detach().cpu().to(torch.int64).clamp(0, num_levels - 1)
    scaled = torch.round(k.to(torch.float64) * (255.0 / (num_levels - 1)))
    return scaled.to(torch.uint8).numpy()


def image_grid(k: Tensor, num_levels: int, nrow: int | None = None, padding: int = 1) -> np.ndarray:
    """Tile images of integer levels into one grid image.

    Args:
        k: integer levels ``[N, C, H, W]`` with C in {1, 3}.
        num_levels: K, the number of levels.
        nrow: images per row; default ceil(sqrt(N)).
        padding: pixels of black border between images.

    Returns:
        ``uint8`` array ``[rows (H + p) + p, nrow (W + p) + p, C]``.
    """
    if k.ndim != 4 or k.shape[1] not in (1, 3):
        raise ValueError(
            f"an image grid needs levels of shape [N, C, H, W] with C = 1 or 3; got {tuple(k.shape)}."
        )
    n, c, h, w = k.shape
    if n == 0:
        raise ValueError("cannot draw an image grid of zero images.")
    nrow = nrow or math.ceil(math.sqrt(n))
    rows = math.ceil(n / nrow)
    pixels = levels_to_uint8(k, num_levels).transpose(0, 2, 3, 1)  # [N, H, W, C]
    grid = np.zeros((rows * (h + padding) + padding, nrow * (w + padding) + padding, c), np.uint8)
    for i in range(n):
        r, col = divmod(i, nrow)
        top, left = padding + r * (h + padding), padding + col * (w + padding)
        grid[top : top + h, left : left + w] = pixels[i]
    return grid


def save_image_grid(
    path: PathLike, k: Tensor, num_levels: int, nrow: int | None = None, scale: int | None = None
) -> Path:
    """Save integer-level images ``[N, C, H, W]`` as one PNG grid (atomically).

    Args:
        path: destination ``.png``.
        k: integer levels ``[N, C, H, W]``.
        num_levels: K.
        nrow: images per row (default ceil(sqrt(N))).
        scale: integer upscaling factor (nearest neighbour); default makes small images
            (8x8 digits) at least 128 pixels wide.
    """
    from PIL import Image

    grid = image_grid(k, num_levels, nrow)
    if scale is None:
        scale = max(1, 128 // max(grid.shape[1], 1))
    image = Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid)
    if scale > 1:
        image = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
    return atomic_write(path, lambda f: image.save(f, format="PNG"))


def save_scatter(path: PathLike, points: Tensor, title: str | None = None, lim: float | None = None) -> Path:
    """Save 2-D points ``[N, 2]`` as a scatter-plot PNG (atomically).

    Args:
        path: destination ``.png``.
        points: float ``[N, 2]``.
        title: optional plot title.
        lim: if given, both axes span [-lim, lim].
    """
    if points.ndim != 2 or points.shape[1] != 2:
        raise ValueError(f"a scatter plot needs points of shape [N, 2]; got {tuple(points.shape)}.")
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    xy = points.detach().cpu().to(torch.float64).numpy()
    fig = Figure(figsize=(4, 4), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    ax.scatter(xy[:, 0], xy[:, 1], s=2, alpha=0.5)
    ax.set_aspect("equal")
    if lim is not None:
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
    if title:
        ax.set_title(title)
    return atomic_write(path, lambda f: fig.savefig(f, format="png"))


def save_samples(directory: PathLike, prefix: str, samples: dict[str, Tensor], num_levels: int | None) -> list[Path]:
    """Write a sampler's output: integer images as PNG grids, 2-D points as scatter plots.

    Args:
        directory: folder for the PNGs.
        prefix: file-name prefix (the sampler's name); files are ``<prefix>_<key>.png``.
        samples: ``{key: tensor}``; int64 ``[N, C, H, W]`` levels or float ``[N, 2]`` points.
        num_levels: K for image samples (``None`` for continuous data).

    Returns:
        The paths written.

    Raises:
        TypeError: for a value that is neither images nor points.
    """
    if not isinstance(samples, dict):
        raise TypeError(
            f"a sampler must return dict[str, Tensor]; sampler {prefix!r} returned {type(samples).__name__}."
        )
    written = []
    for key, value in samples.items():
        path = Path(directory) / f"{prefix}_{key}.png"
        if not isinstance(value, Tensor):
            raise TypeError(f"sampler {prefix!r} returned {type(value).__name__} for {key!r}; expected a Tensor.")
        if value.ndim == 4 and not value.dtype.is_floating_point:
            if num_levels is None:
                num_levels = int(value.max().item()) + 1
            written.append(save_image_grid(path, value, num_levels))
        elif value.ndim == 2 and value.shape[1] == 2 and value.dtype.is_floating_point:
            written.append(save_scatter(path, value, title=f"{prefix} {key}"))
        else:
            raise TypeError(
                f"sampler {prefix!r} returned {key!r} with shape {tuple(value.shape)} and dtype "
                f"{value.dtype}; expected int64 images [N, C, H, W] or float points [N, 2]."
            )
    return written
