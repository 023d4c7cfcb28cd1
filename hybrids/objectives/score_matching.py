"""Score matching baselines: exact (SM), sliced (SSM) and variance-reduced sliced (SSM-VR).

Exact score matching (Hyvarinen, "Estimation of Non-Normalized Statistical Models by Score
Matching", JMLR 2005) minimises, for a score s(x) = s_theta(x) ~ grad log p(x),

    J_SM(theta) = E_x[ tr(ds/dx) + ||s||^2 / 2 ],

which equals the Fisher divergence E||s - grad log p||^2 / 2 minus a constant (integration by
parts). The trace takes D backward passes (one per dimension), so SM is for small D only.

Sliced score matching (Song, Garg, Shi and Ermon, "Sliced Score Matching: A Scalable Approach to
Density and Score Estimation", UAI 2019) replaces the trace by random projections v with
E[v v^T] = I (Rademacher or standard normal):

    J_SSM    = E_x E_v[ v^T (ds/dx) v + (v^T s)^2 / 2 ],
    J_SSM-VR = E_x E_v[ v^T (ds/dx) v ] + E_x ||s||^2 / 2,

both with the expectation J_SM; SSM-VR takes E_v (v^T s)^2 = ||s||^2 in closed form and so has a
lower variance. Each of the ``n_particles`` projections costs one backward pass.

The models of hybrids are noise-conditional (``model.score(x, t)``); these objectives match the
score of p_t, the data perturbed through the model's SDE, ``x_t = m(t) x_0 + sigma_t z``
(``hybrids.objectives.perturb``):

* at one fixed time ``t`` (t = 0 is the data themselves for VP/subVP; VE data then carry the
  sigma_min noise of the library's VE convention), or
* ``noise_conditional=True``: t ~ U[eps, T] per example, each term weighted by
  lambda(t) = sigma_t^2 (DSM's ``'original'`` weighting, NCSN's choice), i.e.
  E_t[ lambda(t) J(p_t) ].

The per-example loss is summed over dimensions, as DSM's. Derivatives with respect to x are taken
through the sum over the batch, so the model must treat examples independently (no batch norm).

gin usage::

    import hybrids.objectives.score_matching
    experiment.objective = @SSM()
    SSM.noise_conditional = True        # or SSM.t = 0.05, one fixed level
    SSM.num_levels = %NUM_LEVELS
    SSM.n_particles = 1
    SSM.projection = 'rademacher'
    SSM.variance_reduction = True       # SSM-VR
"""
from __future__ import annotations

import gin
import torch
from torch import Tensor

from hybrids.objectives.perturb import Perturbation, model_space_data, original_weighting, perturb, sample_times
from hybrids.sdes import SDE, sde_of
from hybrids.tensors import rand, randn
from hybrids.time_sampling import check_eps

__all__ = ["PROJECTIONS", "SM", "SSM", "exact_jacobian_trace", "sample_projections", "sliced_jacobian_term"]

PROJECTIONS = ("rademacher", "gaussian")

DEFAULT_MAX_DIMS = 1024
"""SM's default limit on D: its trace costs D + 1 backward passes per update and, while training,
keeps D second-order graphs alive until the loss is back-propagated, so time and memory grow
linearly in D. 1024 admits the 2-D toys, the 8x8 digits (64) and MNIST (784), and refuses
CIFAR-10 (3072), where one SM update would cost thousands of DSM updates."""


# --- the estimators ---------------------------------------------------------------------------------
def exact_jacobian_trace(s: Tensor, x: Tensor, *, create_graph: bool) -> Tensor:
    """tr(ds/dx) per example by D backward passes, one per dimension d: d s_d / d x_d.

    Args:
        s: the score at ``x``, ``[B, ...]`` like ``x``, in the autograd graph of ``x``.
        x: ``[B, ...]``, requiring grad.
        create_graph: keep the graph of the derivatives (training needs it).

    Returns:
        ``[B]``.
    """
    flat = s.flatten(1)
    trace = torch.zeros(flat.shape[0], dtype=s.dtype, device=s.device)
    for d in range(flat.shape[1]):
        (grad,) = torch.autograd.grad(flat[:, d].sum(), x, create_graph=create_graph, retain_graph=True)
        trace = trace + grad.flatten(1)[:, d]
    return trace


def sample_projections(like: Tensor, n_particles: int, projection: str,
                       generator: torch.Generator | None = None) -> Tensor:
    """``n_particles`` projection vectors per example with E[v v^T] = I.

    Args:
        like: ``[B, ...]``, whose shape, dtype and device the vectors take.
        n_particles: M >= 1.
        projection: ``'rademacher'`` (entries +-1 with probability 1/2) or ``'gaussian'`` (N(0, 1)).
        generator: random source (drawn on its device, then moved; ``hybrids.tensors``).

    Returns:
        ``[M, B, ...]``.
    """
    shape = (n_particles, *like.shape)
    if projection == "gaussian":
        return randn(shape, generator, dtype=like.dtype, device=like.device)
    return 2 * (rand(shape, generator, dtype=like.dtype, device=like.device) < 0.5).to(like.dtype) - 1


def sliced_jacobian_term(s: Tensor, x: Tensor, v: Tensor, *, create_graph: bool) -> Tensor:
    """mean_j v_j^T (ds/dx) v_j per example, one backward pass per projection:
    grad_x (v_j . s) = (ds/dx)^T v_j, then its dot product with v_j.

    Args:
        s: the score at ``x``, ``[B, ...]``, in the autograd graph of ``x``.
        x: ``[B, ...]``, requiring grad.
        v: projections ``[M, B, ...]``.
        create_graph: keep the graph of the derivatives (training needs it).

    Returns:
        ``[B]``.
    """
    total = torch.zeros(s.shape[0], dtype=s.dtype, device=s.device)
    for v_j in v:
        (grad,) = torch.autograd.grad((s * v_j).sum(), x, create_graph=create_graph, retain_graph=True)
        total = total + (grad * v_j).flatten(1).sum(1)
    return total / v.shape[0]


# --- the objectives ---------------------------------------------------------------------------------
class _ScoreMatching:
    """The data path shared by SM and SSM: batch -> x_0 -> (t, x_t, weight) -> per-example loss."""

    def __init__(self, sde: SDE | None, t: float | None, noise_conditional: bool, eps: float,
                 num_levels: int | None):
        name = type(self).__name__
        if noise_conditional and t is not None:
            raise ValueError(f"{name}: give either a fixed time t or noise_conditional=True (t ~ U[eps, T]), not both.")
        if not noise_conditional and t is None:
            raise ValueError(
                f"{name} matches the score of the data perturbed at a noise level: bind {name}.t (a fixed "
                f"time in [0, T]; 0 is the data themselves for VP/subVP) or {name}.noise_conditional = True "
                "(t ~ U[eps, T] weighted by sigma_t^2).")
        self.sde = sde
        self.t = None if t is None else float(t)
        self.noise_conditional = bool(noise_conditional)
        self.eps = float(eps)
        self.num_levels = num_levels
        if sde is not None:
            self._check_sde(sde)

    def _check_sde(self, sde: SDE) -> None:
        if self.noise_conditional:
            check_eps(sde, self.eps)
        elif not 0 <= self.t <= sde.T:
            raise ValueError(f"{type(self).__name__}.t must lie in [0, T = {sde.T}]; got {self.t}.")

    def perturbation(self, model, x0: Tensor, generator: torch.Generator | None = None) -> Perturbation:
        """x_t at the fixed t (weights 1), or at t ~ U[eps, T] weighted by sigma_t^2; the SDE is the
        objective's ``sde`` or else ``model.sde``."""
        sde = sde_of(model, self.sde, binding=f"{type(self).__name__}.sde")
        self._check_sde(sde)
        if self.noise_conditional:
            t, weight = sample_times(sde, x0.shape[0], self.eps, generator, like=x0, weighting=original_weighting)
            return perturb(sde, x0, t, generator, weight=weight)
        t = torch.full((x0.shape[0],), self.t, dtype=x0.dtype, device=x0.device)
        return perturb(sde, x0, t, generator)

    def per_example(self, s: Tensor, x: Tensor, generator: torch.Generator | None, create_graph: bool) -> Tensor:
        """The objective's estimate per example, ``[B]``, from the score ``s`` at ``x``."""
        raise NotImplementedError

    def check_dims(self, num_dims: int) -> None:
        """Raise for data the objective cannot handle (SM: too many dimensions)."""

    def __call__(self, model, batch, *, generator: torch.Generator | None = None) -> tuple[Tensor, dict]:
        x0 = model_space_data(model, batch, self.num_levels, generator)
        self.check_dims(x0[0].numel())
        p = self.perturbation(model, x0, generator)
        create_graph = torch.is_grad_enabled()
        with torch.enable_grad():
            x = p.x_t.detach().requires_grad_(True)
            s = model.score(x, p.t)
            losses = p.weight * self.per_example(s, x, generator, create_graph)
        loss = losses.mean()
        return loss, {"per_example_loss": losses.detach()}


@gin.configurable(module="hybrids.objectives")
class SM(_ScoreMatching):
    """Exact score matching ``objective(model, batch, *, generator=None) -> (loss, metrics)``.

    Per example (x = x_t, s = model.score(x_t, t)): l_i = w_i [ tr(ds/dx) + ||s||^2 / 2 ], the
    trace by D backward passes; w_i = 1 at a fixed t, sigma_t^2 with ``noise_conditional``.
    Loss: the batch mean; metrics: ``per_example_loss`` (``[B]``, detached).

    gin: ``experiment.objective = @SM()``, ``SM.t = 0.0`` (or ``SM.noise_conditional = True``).

    Args:
        sde: the forward SDE of the perturbation (None: ``model.sde``).
        t: the fixed time in [0, T] (None with ``noise_conditional``).
        noise_conditional: draw t ~ U[eps, T] per example and weight by sigma_t^2.
        eps: smallest time of the noise-conditional variant.
        num_levels: K of integer data (dequantized to [-1, 1]); None for continuous data.
        max_dims: largest D accepted (see ``DEFAULT_MAX_DIMS``); raise it knowingly.

    Raises:
        ValueError: at call time for D > ``max_dims``, naming SSM and DSM.
    """

    def __init__(
        self,
        sde: SDE | None = None,
        t: float | None = None,
        noise_conditional: bool = False,
        eps: float = 1e-5,
        num_levels: int | None = 256,
        max_dims: int = DEFAULT_MAX_DIMS,
    ):
        if isinstance(max_dims, bool) or not isinstance(max_dims, int) or max_dims < 1:
            raise ValueError(f"SM.max_dims must be an integer >= 1; got {max_dims!r}.")
        super().__init__(sde, t, noise_conditional, eps, num_levels)
        self.max_dims = max_dims

    def check_dims(self, num_dims: int) -> None:
        if num_dims > self.max_dims:
            raise ValueError(
                f"SM computes tr(ds/dx) with one backward pass per dimension: D = {num_dims} exceeds "
                f"SM.max_dims = {self.max_dims}. Use sliced score matching (@SSM, one backward pass per "
                "projection) or denoising score matching (@DSM) for data this large, or raise SM.max_dims "
                "knowingly (time and memory grow linearly in D).")

    def per_example(self, s: Tensor, x: Tensor, generator: torch.Generator | None, create_graph: bool) -> Tensor:
        """tr(ds/dx) + ||s||^2 / 2, ``[B]``."""
        return exact_jacobian_trace(s, x, create_graph=create_graph) + 0.5 * s.flatten(1).pow(2).sum(1)


@gin.configurable(module="hybrids.objectives")
class SSM(_ScoreMatching):
    """Sliced score matching (and SSM-VR) ``objective(model, batch, *, generator=None) -> (loss, metrics)``.

    Per example, with M projections v_j (drawn after t and z): l_i = w_i mean_j [ v_j^T (ds/dx) v_j
    + (v_j^T s)^2 / 2 ] (SSM) or w_i [ mean_j v_j^T (ds/dx) v_j + ||s||^2 / 2 ] (SSM-VR);
    w_i = 1 at a fixed t, sigma_t^2 with ``noise_conditional``. Loss: the batch mean; metrics:
    ``per_example_loss`` (``[B]``, detached).

    gin: ``experiment.objective = @SSM()``, ``SSM.noise_conditional = True`` (or ``SSM.t = ...``),
    ``SSM.variance_reduction = True`` for SSM-VR.

    Args:
        sde: the forward SDE of the perturbation (None: ``model.sde``).
        t: the fixed time in [0, T] (None with ``noise_conditional``).
        noise_conditional: draw t ~ U[eps, T] per example and weight by sigma_t^2.
        eps: smallest time of the noise-conditional variant.
        num_levels: K of integer data (dequantized to [-1, 1]); None for continuous data.
        n_particles: projections M per example (one backward pass each).
        projection: ``'rademacher'`` or ``'gaussian'``.
        variance_reduction: SSM-VR (||s||^2 / 2 in closed form) instead of SSM.
    """

    def __init__(
        self,
        sde: SDE | None = None,
        t: float | None = None,
        noise_conditional: bool = False,
        eps: float = 1e-5,
        num_levels: int | None = 256,
        n_particles: int = 1,
        projection: str = "rademacher",
        variance_reduction: bool = False,
    ):
        if isinstance(n_particles, bool) or not isinstance(n_particles, int) or n_particles < 1:
            raise ValueError(f"SSM.n_particles (projections per example) must be an integer >= 1; got {n_particles!r}.")
        if projection not in PROJECTIONS:
            raise ValueError(f"Unknown SSM.projection {projection!r}; choose one of {list(PROJECTIONS)}.")
        super().__init__(sde, t, noise_conditional, eps, num_levels)
        self.n_particles = n_particles
        self.projection = projection
        self.variance_reduction = bool(variance_reduction)

    def per_example(self, s: Tensor, x: Tensor, generator: torch.Generator | None, create_graph: bool) -> Tensor:
        """mean_j v_j^T (ds/dx) v_j + (v_j^T s)^2 / 2 (SSM) or + ||s||^2 / 2 (SSM-VR), ``[B]``."""
        v = sample_projections(x, self.n_particles, self.projection, generator)
        jacobian = sliced_jacobian_term(s, x, v, create_graph=create_graph)
        if self.variance_reduction:
            return jacobian + 0.5 * s.flatten(1).pow(2).sum(1)
        return jacobian + 0.5 * (s.unsqueeze(0) * v).flatten(2).sum(2).pow(2).mean(0)
