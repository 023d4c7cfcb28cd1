"""Seeded generators of 2-D toy distributions (the FFJORD-style benchmark set).

Every generator returns float32 points ``[n, 2]`` that lie (up to Gaussian tails) within
[-4, 4]^2. The shapes follow the scales popularised by FFJORD (Grathwohl et al., 2019); the
parameters below are this library's own and are stated in each docstring.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

__all__ = ["TOY_NAMES", "sample_toy", "RING_RADII", "GAUSSIAN_CENTRES", "GAUSSIAN_STD"]

# 8gaussians: centres on a circle of radius 2 sqrt(2), isotropic std 0.5 / sqrt(2).
_GAUSSIAN_RADIUS = 2.0 * math.sqrt(2.0)
GAUSSIAN_STD = 0.5 / math.sqrt(2.0)
GAUSSIAN_CENTRES = torch.tensor(
    [[_GAUSSIAN_RADIUS * math.cos(a), _GAUSSIAN_RADIUS * math.sin(a)]
     for a in (2.0 * math.pi * i / 8 for i in range(8))]
)
# rings: four concentric circles with radial Gaussian noise of std 0.08.
RING_RADII = (0.75, 1.5, 2.25, 3.0)
_RING_NOISE = 0.08


def _uniform(n: int, generator: torch.Generator | None) -> Tensor:
    return torch.rand(n, generator=generator, dtype=torch.float64)


def _normal(shape: tuple[int, ...], generator: torch.Generator | None) -> Tensor:
    return torch.randn(shape, generator=generator, dtype=torch.float64)


def _checkerboard(n: int, generator: torch.Generator | None) -> Tensor:
    """Uniform on the 8 "black" cells of a 4 x 4 board of 2 x 2 cells covering [-4, 4]^2.

    Cell (i, j), i, j in {0..3}, covers [-4 + 2i, -2 + 2i] x [-4 + 2j, -2 + 2j]; it is black
    when i + j is even.
    """
    cell = torch.randint(0, 8, (n,), generator=generator)
    i = cell // 2
    j = 2 * (cell % 2) + (i % 2)  # i + j even
    offset = torch.stack([_uniform(n, generator), _uniform(n, generator)], dim=1)
    corner = torch.stack([i, j], dim=1).double() * 2.0 - 4.0
    return corner + 2.0 * offset


def _eight_gaussians(n: int, generator: torch.Generator | None) -> Tensor:
    """Equal mixture of 8 Gaussians: centres ``GAUSSIAN_CENTRES``, std ``GAUSSIAN_STD``."""
    component = torch.randint(0, 8, (n,), generator=generator)
    return GAUSSIAN_CENTRES.double()[component] + GAUSSIAN_STD * _normal((n, 2), generator)


def _rings(n: int, generator: torch.Generator | None) -> Tensor:
    """Equal mixture of circles with radii ``RING_RADII``; angle uniform, radius + N(0, 0.08^2)."""
    radii = torch.tensor(RING_RADII, dtype=torch.float64)
    r = radii[torch.randint(0, len(RING_RADII), (n,), generator=generator)]
    r = r + _RING_NOISE * _normal((n,), generator)
    angle = 2.0 * math.pi * _uniform(n, generator)
    return torch.stack([r * torch.cos(angle), r * torch.sin(angle)], dim=1)


def _moons(n: int, generator: torch.Generator | None) -> Tensor:
    """Two interleaved half circles (as scikit-learn's make_moons), noise std 0.1, then x 2.

    Upper moon: (cos a, sin a); lower moon: (1 - cos a, 0.5 - sin a), a ~ U[0, pi]; both are
    shifted by (-0.5, -0.25) before scaling by 2, so the set is centred near the origin.
    """
    a = math.pi * _uniform(n, generator)
    lower = torch.rand(n, generator=generator) < 0.5
    x = torch.where(lower, 1.0 - torch.cos(a), torch.cos(a))
    y = torch.where(lower, 0.5 - torch.sin(a), torch.sin(a))
    points = torch.stack([x - 0.5, y - 0.25], dim=1) + 0.1 * _normal((n, 2), generator)
    return 2.0 * points


def _swissroll(n: int, generator: torch.Generator | None) -> Tensor:
    """2-D Swiss roll: s ~ U[1.5 pi, 4.5 pi], point (s cos s, s sin s) / 5 + N(0, 0.2^2 I)."""
    s = 1.5 * math.pi * (1.0 + 2.0 * _uniform(n, generator))
    points = torch.stack([s * torch.cos(s), s * torch.sin(s)], dim=1) / 5.0
    return points + 0.2 * _normal((n, 2), generator)


def _pinwheel(n: int, generator: torch.Generator | None) -> Tensor:
    """Five spiral arms: a point (1 + 0.3 e1, 0.1 e2), e ~ N(0, I), rotated by the arm angle
    2 pi c / 5 plus 0.25 exp(1 + 0.3 e1), then scaled by 2 (c uniform over the 5 arms)."""
    arm = torch.randint(0, 5, (n,), generator=generator)
    eps = _normal((n, 2), generator)
    radial = 1.0 + 0.3 * eps[:, 0]
    tangential = 0.1 * eps[:, 1]
    angle = 2.0 * math.pi * arm.double() / 5.0 + 0.25 * torch.exp(radial)
    cos, sin = torch.cos(angle), torch.sin(angle)
    x = cos * radial - sin * tangential
    y = sin * radial + cos * tangential
    return 2.0 * torch.stack([x, y], dim=1)


_TOYS: dict[str, Callable[[int, torch.Generator | None], Tensor]] = {
    "checkerboard": _checkerboard,
    "8gaussians": _eight_gaussians,
    "rings": _rings,
    "moons": _moons,
    "swissroll": _swissroll,
    "pinwheel": _pinwheel,
}
TOY_NAMES: tuple[str, ...] = tuple(_TOYS)


def sample_toy(name: str, n: int, generator: torch.Generator | None = None) -> Tensor:
    """Draw ``n`` points from the 2-D toy distribution ``name``.

    Args:
        name: one of ``TOY_NAMES`` ('checkerboard', '8gaussians', 'rings', 'moons',
            'swissroll', 'pinwheel').
        n: number of points (>= 0).
        generator: CPU ``torch.Generator`` for reproducible draws (None: global RNG).

    Returns:
        float32 tensor ``[n, 2]``.

    Raises:
        ValueError: unknown name or negative ``n``.
    """
    if name not in _TOYS:
        raise ValueError(f"unknown toy dataset {name!r}; known toys: {', '.join(TOY_NAMES)}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be a non-negative int, got {n!r}")
    return _TOYS[name](n, generator).to(torch.float32)
