"""Variational autoencoders with Gaussian or implicit encoders, and score estimators of the encoder.

A VAE on binarised images x in {0, 1}^D (Kingma and Welling, "Auto-Encoding Variational Bayes",
ICLR 2014): prior p(z) = N(0, I_d), decoder p(x | z) = prod_i Bernoulli(x_i; sigmoid(f(z)_i)), and

    ELBO(x) = E_q[log p(x | z) + log p(z)] + H[q(. | x)].

Encoders:

* :class:`GaussianEncoder`: q(z | x) = N(mu(x), diag exp(log_var(x))), entropy in closed form
  H = sum_j (log_var_j + log(2 pi e)) / 2 (the baseline);
* :class:`ImplicitEncoder`: z = g(x, eps), eps ~ N(0, I_n), an MLP of x and eps concatenated; q(z | x)
  has no tractable density (Song, Garg, Shi and Ermon, "Sliced Score Matching: A Scalable Approach
  to Density and Score Estimation", UAI 2019). With n >= d, z has a density for almost every
  network.

The entropy gradient of an implicit encoder needs the score grad_z log q(z | x) (see
``hybrids.objectives.vae``); two estimators fit it on encoder samples:

* :class:`LatentScoreEstimator`: a joint score network in R^d given an embedding of x, trained by
  sliced score matching;
* :class:`ARLatentScoreEstimator`: an autoregressive conditional score model (Meng, Yu, Song, Song
  and Ermon, "Autoregressive Score Matching", NeurIPS 2020) over the d latent coordinates given an
  embedding of x, trained by composite score matching. It models only the univariate scores
  d/du_j log q(u_j | u_<j, x); its joint score comes from :func:`ar_joint_score`, which
  normalises each one-dimensional conditional by quadrature.

Both work in standardised coordinates u = L^-1 (z - m) of a :class:`GaussianFit` (m, L L^T) of
q(. | x) (the objective fits the mean and covariance of fresh encoder draws, or uses the identity):
a score model of u gives the score of z by the chain rule, grad_z log q(z | x) = L^-T grad_u log q_u(u | x)
(the Jacobian of z -> u is constant). A shrinking encoder's scores grow like 1/std along its
narrowest directions; in u they stay of order one, which an estimator refitted a few steps at a
time can follow.

Data: levels k in {0..K-1} become binary pixels by ``binarize`` (b ~ Bernoulli(k / (K - 1)), the
"dynamically binarised MNIST" of the VAE literature). :func:`importance_log_weights` with a proposal
of :meth:`VAE.proposal` gives the importance-sampling log-likelihood estimate of any VAE.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, Sequence

import gin
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hybrids.data import check_levels
from hybrids.models.base import diagonal_conditional_scores
from hybrids.models.heads import ConditionalScoreHead, smooth_activation
from hybrids.models.made import MADE
from hybrids.tensors import model_device, model_dtype, rand, randn

ACTIVATIONS: dict[str, type[nn.Module]] = {"tanh": nn.Tanh, "softplus": nn.Softplus, "elu": nn.ELU, "silu": nn.SiLU}
"""Activations of the encoder and decoder MLPs (the score estimators need smooth ones too; all four are)."""

PROPOSALS = ("mixture", "encoder", "laplace")
"""The importance-sampling proposals of :meth:`VAE.proposal`."""


def mlp(in_features: int, hidden: Sequence[int], out_features: int, activation: str) -> nn.Sequential:
    """Linear layers in_features -> hidden... -> out_features with ``activation`` between them
    (none after the last; ``hidden=()`` is one linear map).

    Raises:
        ValueError: a width below 1 or an unknown activation (the message lists the choices).
    """
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; choose one of {sorted(ACTIVATIONS)}.")
    widths = [int(in_features), *(int(h) for h in hidden), int(out_features)]
    if min(widths) < 1:
        raise ValueError(f"layer widths must be >= 1; got {widths}.")
    layers: list[nn.Module] = []
    for i, (w_in, w_out) in enumerate(zip(widths[:-1], widths[1:])):
        layers += [nn.Linear(w_in, w_out)] + ([ACTIVATIONS[activation]()] if i < len(widths) - 2 else [])
    return nn.Sequential(*layers)


def binarize(k: Tensor, num_levels: int, generator: torch.Generator | None = None) -> Tensor:
    """Stochastic binarisation of levels: b_i = 1 with probability k_i / (K - 1), else 0.

    Args:
        k: int64 levels ``[B, ...]`` in {0..K-1}.
        num_levels: K.
        generator: random source.

    Returns:
        ``[B, D]`` floats in {0, 1} (each example flattened, raster order).
    """
    check_levels(k, num_levels)
    p = k.reshape(k.shape[0], -1).to(torch.get_default_dtype()) / (num_levels - 1)
    return (rand(p.shape, generator, dtype=p.dtype, device=p.device) < p).to(p.dtype)


def standard_normal_log_prob(z: Tensor) -> Tensor:
    """log N(z; 0, I) = -||z||^2 / 2 - d log(2 pi) / 2 over the last dimension, ``[...]``."""
    return -0.5 * z.pow(2).sum(-1) - 0.5 * z.shape[-1] * math.log(2 * math.pi)


def _flat(x: Tensor, dim: int, who: str) -> Tensor:
    """``[B, D]`` or ``[B, C, H, W]`` with C H W = D -> ``[B, D]``."""
    if x.ndim < 2 or math.prod(x.shape[1:]) != dim:
        raise ValueError(f"{who} expects x of shape [B, {dim}] (or images with {dim} values); got {tuple(x.shape)}.")
    return x.reshape(x.shape[0], dim)


# --- Gaussians fitted per example: standardisation and proposals --------------------------------
@dataclasses.dataclass(frozen=True)
class GaussianFit:
    """N(loc, L L^T) per example, L = ``scale_tril``: a proposal r(z | x) and a standardisation
    u = L^-1 (z - loc).

    Attributes:
        loc: ``[B, d]``.
        scale_tril: ``[B, d, d]`` lower-triangular with a positive diagonal.
    """

    loc: Tensor
    scale_tril: Tensor

    @classmethod
    def identity(cls, like: Tensor) -> "GaussianFit":
        """N(0, I) for every example of ``like`` ``[B, d]`` (u = z)."""
        eye = torch.eye(like.shape[-1], dtype=like.dtype, device=like.device)
        return cls(torch.zeros_like(like), eye.expand(like.shape[0], -1, -1))

    def sample(self, num_samples: int, generator: torch.Generator | None = None) -> Tensor:
        """``[K, B, d]`` draws loc + L eps."""
        eps = randn((num_samples, *self.loc.shape), generator, dtype=self.loc.dtype, device=self.loc.device)
        return self.loc + (self.scale_tril @ eps.unsqueeze(-1)).squeeze(-1)

    def whiten(self, z: Tensor) -> Tensor:
        """u = L^-1 (z - loc) for z ``[..., B, d]``."""
        diff = (z - self.loc).unsqueeze(-1)
        tril = self.scale_tril.expand(*diff.shape[:-2], -1, -1)
        return torch.linalg.solve_triangular(tril, diff, upper=False).squeeze(-1)

    def score_from_whitened(self, score_u: Tensor) -> Tensor:
        """grad_z = L^-T grad_u for ``[B, d]`` scores in u (the chain rule through u = L^-1 (z - loc))."""
        solved = torch.linalg.solve_triangular(self.scale_tril.transpose(-1, -2), score_u.unsqueeze(-1), upper=True)
        return solved.squeeze(-1)

    def log_prob(self, z: Tensor) -> Tensor:
        """log N(z; loc, L L^T) ``[K, B]`` for z ``[K, B, d]``."""
        log_det = torch.diagonal(self.scale_tril, dim1=-2, dim2=-1).log().sum(-1)
        return -0.5 * self.whiten(z).pow(2).sum(-1) - log_det - 0.5 * z.shape[-1] * math.log(2 * math.pi)

    def inflated(self, factor: float) -> "GaussianFit":
        """The same Gaussian with its scale times ``factor``."""
        return GaussianFit(self.loc, factor * self.scale_tril)


def fit_gaussian(samples: Tensor, ridge: float = 1e-6) -> GaussianFit:
    """The Gaussian with the samples' mean and covariance, per example.

    Covariance S = sum_m (z_m - m)(z_m - m)^T / (M - 1), factor L = chol(S + lambda I) with
    lambda = ridge (tr S / d + 1e-12) (keeps the factor defined).

    Args:
        samples: ``[M, B, d]``, M > d.
        ridge: relative diagonal loading.

    Raises:
        ValueError: M <= d.
    """
    num, _, dim = samples.shape
    if num <= dim:
        raise ValueError(f"fitting a {dim}-dimensional Gaussian needs more than {dim} samples per example; got {num}.")
    loc = samples.mean(0)
    centred = (samples - loc).permute(1, 2, 0)  # [B, d, M]
    cov = centred @ centred.transpose(-1, -2) / (num - 1)
    trace = torch.diagonal(cov, dim1=-2, dim2=-1).sum(-1) / dim
    eye = torch.eye(dim, dtype=cov.dtype, device=cov.device)
    return GaussianFit(loc, torch.linalg.cholesky(cov + (ridge * (trace + 1e-12))[:, None, None] * eye))


@dataclasses.dataclass(frozen=True)
class MixtureProposal:
    """r(z | x) = (1/C) sum_c N(z; loc_c, L_c L_c^T), an equal-weight (defensive) mixture: its
    weights p / r are at most C times those of any one component, so it is never much worse than
    its best component.

    Attributes:
        components: the C Gaussians.
    """

    components: tuple[GaussianFit, ...]

    def sample(self, num_samples: int, generator: torch.Generator | None = None) -> Tensor:
        """``[K, B, d]``: each draw from a uniformly chosen component."""
        draws = torch.stack([c.sample(num_samples, generator) for c in self.components])  # [C, K, B, d]
        which = rand(draws.shape[1:3], generator, dtype=draws.dtype, device=draws.device)
        index = (which * len(self.components)).long().clamp(max=len(self.components) - 1)
        return torch.gather(draws, 0, index[None, ..., None].expand(1, *draws.shape[1:]))[0]

    def log_prob(self, z: Tensor) -> Tensor:
        """log r(z | x) ``[K, B]`` for z ``[K, B, d]``."""
        logs = torch.stack([c.log_prob(z) for c in self.components])
        return torch.logsumexp(logs, 0) - math.log(len(self.components))


def _precision(log_joint: Callable[[Tensor], Tensor], z: Tensor, min_precision: float) -> tuple[Tensor, Tensor, Tensor]:
    """f, grad f and P = -d^2 f / dz^2 at z per example (d backward passes), P symmetrised and its
    eigenvalues clipped below at ``min_precision``; all detached."""
    with torch.enable_grad():
        z = z.detach().requires_grad_(True)
        f = log_joint(z)
        (grad,) = torch.autograd.grad(f.sum(), z, create_graph=True)
        rows = [torch.autograd.grad(grad[:, j].sum(), z, retain_graph=True)[0] for j in range(z.shape[1])]
    precision = -torch.stack(rows, dim=1).detach()
    eigenvalues, vectors = torch.linalg.eigh(0.5 * (precision + precision.transpose(-1, -2)))
    precision = vectors @ torch.diag_embed(eigenvalues.clamp_min(min_precision)) @ vectors.transpose(-1, -2)
    return f.detach(), grad.detach(), precision


def laplace_fit(log_joint: Callable[[Tensor], Tensor], z0: Tensor, *, num_steps: int = 200, lr: float = 0.02,
                newton_steps: int = 2, min_precision: float = 0.1) -> GaussianFit:
    """The Laplace approximation N(z*, P^-1) of the posterior p(z | x) ∝ exp(f(z)), per example.

    z* maximises f(z) = log p(x, z): ``num_steps`` Adam steps of size ``lr`` from ``z0``, then
    ``newton_steps`` Newton steps z <- z + P^-1 grad f, each kept only where it raises f (exact in
    one step for a quadratic f). P = -d^2 f / dz^2 at z*, symmetrised, its eigenvalues clipped below
    at ``min_precision`` (f need not be concave). Any such Gaussian is a valid proposal; the closer
    it is to the posterior, the smaller the variance of the weights.

    Args:
        log_joint: z ``[B, d]`` -> f ``[B]``, each example's value depending on its own z only.
        z0: ``[B, d]`` starting points.
        num_steps: Adam steps.
        lr: Adam step size.
        newton_steps: Newton steps after Adam.
        min_precision: smallest eigenvalue of P.
    """
    z = z0.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        optimizer = torch.optim.Adam([z], lr=lr)
        for _ in range(int(num_steps)):  # gradients in z only: the model's parameters keep theirs
            (z.grad,) = torch.autograd.grad(-log_joint(z).sum(), z)
            optimizer.step()
    z = z.detach()
    f, grad, precision = _precision(log_joint, z, min_precision)
    for _ in range(int(newton_steps)):
        proposed = z + torch.linalg.solve(precision, grad.unsqueeze(-1)).squeeze(-1)
        f_new, grad_new, precision_new = _precision(log_joint, proposed, min_precision)
        better = (f_new > f)[:, None]
        z, f = torch.where(better, proposed, z), torch.where(better[:, 0], f_new, f)
        grad = torch.where(better, grad_new, grad)
        precision = torch.where(better[..., None], precision_new, precision)
    cov = torch.linalg.inv(precision)
    return GaussianFit(z, torch.linalg.cholesky(0.5 * (cov + cov.transpose(-1, -2))))


def importance_log_weights(log_joint: Callable[[Tensor], Tensor], proposal: GaussianFit | MixtureProposal,
                           num_samples: int, generator: torch.Generator | None = None, chunk: int = 128) -> Tensor:
    """Log importance weights log w_k = log p(x, z_k) - log r(z_k | x), z_k ~ r, k = 1..K.

    log (1/K) sum_k w_k (``logsumexp(w, 0) - log K``) estimates log p(x): (1/K) sum_k w_k is an
    unbiased estimator of p(x) = int p(x, z) dz for any r with full support, so the log is a lower
    bound in expectation (Jensen) that tightens as K grows (Burda, Grosse and Salakhutdinov,
    "Importance Weighted Autoencoders", ICLR 2016).

    Args:
        log_joint: z ``[k, B, d]`` -> log p(x, z) ``[k, B]`` (the examples x fixed inside).
        proposal: r(z | x) per example (its draws must not depend on the z_k).
        num_samples: K.
        generator: random source.
        chunk: draws per evaluation of ``log_joint``.

    Returns:
        ``[K, B]``.
    """
    out = []
    with torch.no_grad():
        for start in range(0, int(num_samples), int(chunk)):
            z = proposal.sample(min(int(chunk), int(num_samples) - start), generator)
            out.append(log_joint(z) - proposal.log_prob(z))
    return torch.cat(out)


# --- decoder -----------------------------------------------------------------------------------
@gin.configurable(module="hybrids.models")
class BernoulliDecoder(nn.Module):
    """p(x | z) = prod_i Bernoulli(x_i; sigmoid(l_i)), logits l = f(z) from an MLP.

    Args:
        latent_dim: d.
        data_dim: D.
        hidden: hidden widths of f.
        activation: a key of ``ACTIVATIONS``.
    """

    def __init__(self, latent_dim: int, data_dim: int, hidden: Sequence[int] = (256, 256), activation: str = "tanh"):
        super().__init__()
        self.latent_dim, self.data_dim = int(latent_dim), int(data_dim)
        self.net = mlp(latent_dim, hidden, data_dim, activation)

    def forward(self, z: Tensor) -> Tensor:
        """Logits ``[..., D]`` of z ``[..., d]``."""
        return self.net(z)

    def log_prob(self, x: Tensor, z: Tensor) -> Tensor:
        """log p(x | z) = sum_i [x_i l_i - softplus(l_i)] in nats.

        Args:
            x: ``[B, D]`` in {0, 1} (broadcast against z's leading dimensions).
            z: ``[..., B, d]``.

        Returns:
            ``[..., B]``.
        """
        logits = self.net(z)
        return (x * logits - F.softplus(logits)).sum(-1)


# --- encoders ----------------------------------------------------------------------------------
@gin.configurable(module="hybrids.models")
class GaussianEncoder(nn.Module):
    """q(z | x) = N(mu(x), diag exp(log_var(x))): an MLP body, then one linear map to (mu, log_var).

    Args:
        data_dim: D.
        latent_dim: d.
        hidden: hidden widths of the body.
        activation: a key of ``ACTIVATIONS``.
    """

    def __init__(self, data_dim: int, latent_dim: int, hidden: Sequence[int] = (256, 256), activation: str = "tanh"):
        super().__init__()
        self.data_dim, self.latent_dim = int(data_dim), int(latent_dim)
        self.net = mlp(data_dim, hidden, 2 * latent_dim, activation)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(mu, log_var), each ``[B, d]``, of x ``[B, D]``."""
        mu, log_var = self.net(_flat(x, self.data_dim, type(self).__name__)).chunk(2, dim=-1)
        return mu, log_var

    @staticmethod
    def entropy(log_var: Tensor) -> Tensor:
        """H[N(mu, diag exp(log_var))] = sum_j (log_var_j + log(2 pi e)) / 2, ``[B]``."""
        return 0.5 * (log_var + math.log(2 * math.pi * math.e)).sum(-1)


@gin.configurable(module="hybrids.models")
class ImplicitEncoder(nn.Module):
    """z = g(x, eps) with eps ~ N(0, I_n): an MLP of [x, eps]; q(z | x) is implicit.

    Args:
        data_dim: D.
        latent_dim: d.
        noise_dim: n >= d (with n < d the samples lie on an n-dimensional manifold and have no
            density, hence no score). None: n = d.
        hidden: hidden widths (``()``: z = W_x x + W_eps eps + b, secretly Gaussian).
        activation: a key of ``ACTIVATIONS``.

    Raises:
        ValueError: n < d.
    """

    def __init__(self, data_dim: int, latent_dim: int, noise_dim: int | None = None,
                 hidden: Sequence[int] = (256, 256), activation: str = "tanh"):
        super().__init__()
        noise_dim = latent_dim if noise_dim is None else int(noise_dim)
        if noise_dim < latent_dim:
            raise ValueError(
                f"ImplicitEncoder.noise_dim = {noise_dim} is below latent_dim = {latent_dim}: z = g(x, eps) then "
                "lies on a lower-dimensional manifold and q(z | x) has no density or score; set noise_dim >= "
                "latent_dim (None: equal).")
        self.data_dim, self.latent_dim, self.noise_dim = int(data_dim), int(latent_dim), noise_dim
        self.net = mlp(data_dim + noise_dim, hidden, latent_dim, activation)

    def forward(self, x: Tensor, eps: Tensor) -> Tensor:
        """z = g(x, eps) ``[B, d]`` for x ``[B, D]`` and eps ``[B, n]``."""
        return self.net(torch.cat([_flat(x, self.data_dim, type(self).__name__), eps], dim=-1))

    def sample(self, x: Tensor, generator: torch.Generator | None = None, num_samples: int | None = None) -> Tensor:
        """Draws z ~ q(z | x) (differentiable in the parameters): ``[B, d]``, or ``[M, B, d]`` for
        ``num_samples`` = M."""
        x = _flat(x, self.data_dim, type(self).__name__)
        many = 1 if num_samples is None else int(num_samples)
        x_rep = x.expand(many, -1, -1).reshape(many * x.shape[0], -1)
        eps = randn((x_rep.shape[0], self.noise_dim), generator, dtype=x.dtype, device=x.device)
        z = self(x_rep, eps)
        return z if num_samples is None else z.reshape(many, x.shape[0], self.latent_dim)


# --- score estimators of q(z | x), in standardised coordinates ----------------------------------
@gin.configurable(module="hybrids.models")
class LatentScoreEstimator(nn.Module):
    """A joint score network t(u, x) ~ grad_u log q_u(u | x) of standardised latents u: an MLP of
    [u, e(x)], e an MLP embedding; ``score`` maps it to grad_z log q(z | x) = L^-T t(u, x).

    Trained by sliced score matching on standardised encoder samples (``hybrids.objectives.vae``).

    Args:
        data_dim: D.
        latent_dim: d.
        embed_dim: width of e(x).
        embed_hidden: hidden widths of the embedding MLP.
        hidden: hidden widths of the score MLP.
        activation: 'softplus', 'elu' or 'silu' (smooth: SSM differentiates the score in u).
    """

    def __init__(self, data_dim: int, latent_dim: int, embed_dim: int = 64, embed_hidden: Sequence[int] = (256,),
                 hidden: Sequence[int] = (256, 256), activation: str = "softplus"):
        super().__init__()
        smooth_activation(activation)
        self.data_dim, self.latent_dim = int(data_dim), int(latent_dim)
        self.embed = mlp(data_dim, embed_hidden, embed_dim, activation)
        self.net = mlp(latent_dim + embed_dim, hidden, latent_dim, activation)

    def forward(self, u: Tensor, x: Tensor) -> Tensor:
        """t(u, x) ``[B, d]`` for u ``[B, d]`` and x ``[B, D]``, in the autograd graph of u."""
        return self.net(torch.cat([u, self.embed(_flat(x, self.data_dim, type(self).__name__))], dim=-1))

    def score(self, z: Tensor, x: Tensor, fit: GaussianFit) -> Tensor:
        """The estimate of grad_z log q(z | x) at z ``[B, d]`` standardised by ``fit``, detached."""
        with torch.no_grad():
            return fit.score_from_whitened(self(fit.whiten(z), x))


@gin.configurable(module="hybrids.models")
class ARLatentScoreEstimator(nn.Module):
    """An autoregressive conditional score model of standardised latents u given x (AR-CSM).

    s_j(u, x) = h(u_j, c_j) ~ d/du_j log q_u(u_j | u_<j, x), with causal contexts
    c = MADE(u) + conditioning: the embedding e(x) is added (through linear maps) to every hidden
    pre-activation of the MADE and to its output, so c_j depends on u_<j and x only (c_1 on x
    only). h is the per-position head of ``hybrids.models.heads``. Trained by composite score
    matching on standardised encoder samples; ``score`` gives grad_z log q(z | x) = L^-T grad_u,
    the joint score in u by :func:`ar_joint_score`.

    Args:
        data_dim: D.
        latent_dim: d.
        embed_dim: width of e(x).
        embed_hidden: hidden widths of the embedding MLP.
        hidden: MADE hidden widths.
        context_features: F, the width of c_j.
        head_hidden: hidden widths of h.
        activation: 'softplus', 'elu' or 'silu'.
        num_nodes: quadrature nodes per conditional (odd, >= 3) of the joint score.
        half_width: half-width of the quadrature grid in units of the conditional's local scale.
        max_scale: largest local scale of the grid (used where the conditional is not log-concave
            at the sample).
    """

    def __init__(self, data_dim: int, latent_dim: int, embed_dim: int = 64, embed_hidden: Sequence[int] = (256,),
                 hidden: Sequence[int] = (256, 256), context_features: int = 16, head_hidden: Sequence[int] = (64, 64),
                 activation: str = "softplus", num_nodes: int = 33, half_width: float = 8.0, max_scale: float = 2.0):
        super().__init__()
        check_quadrature(num_nodes, half_width, max_scale)
        self.data_dim, self.latent_dim, self.context_features = int(data_dim), int(latent_dim), int(context_features)
        self.num_nodes, self.half_width, self.max_scale = int(num_nodes), float(half_width), float(max_scale)
        self.embed = mlp(data_dim, embed_hidden, embed_dim, activation)
        self.made = MADE(latent_dim, context_features, hidden, activation)
        self.conditioning = nn.ModuleList(nn.Linear(embed_dim, h) for h in hidden)
        self.output_conditioning = nn.Linear(embed_dim, latent_dim * context_features)
        self.score_head = ConditionalScoreHead(context_features, head_hidden, activation)

    def context(self, u: Tensor, x: Tensor) -> Tensor:
        """Causal contexts ``[B, d, F]``: c_j depends on u_<j and x only."""
        e = self.embed(_flat(x, self.data_dim, type(self).__name__))
        h = u
        for layer, cond in zip(self.made.layers, self.conditioning):
            h = self.made.act(layer(h) + cond(e))
        out = self.made.output(h) + self.made.direct(u) + self.output_conditioning(e)
        return out.reshape(u.shape[0], self.latent_dim, self.context_features)

    def head(self, v: Tensor, c: Tensor) -> Tensor:
        """s_j = h(v_j, c_j) position-wise: v ``[B, K]``, c ``[B, K, F]`` -> ``[B, K]``."""
        return self.score_head(v, c)

    def conditional_scores(self, u: Tensor, x: Tensor, *, create_graph: bool | None = None) -> tuple[Tensor, Tensor]:
        """(s, ds/du): s_j = h(u_j, c_j) and ds_j/du_j, each ``[B, d]``, from one backward pass
        (``hybrids.models.base.diagonal_conditional_scores``; create_graph None: when grad mode is on)."""
        c = self.context(u, x)
        return diagonal_conditional_scores(lambda v: self.head(v, c), u, create_graph=create_graph)

    def score(self, z: Tensor, x: Tensor, fit: GaussianFit) -> Tensor:
        """The estimate of grad_z log q(z | x) at z ``[B, d]`` standardised by ``fit``, detached."""
        score_u = ar_joint_score(lambda v: self.context(v, x), self.head, fit.whiten(z.detach()),
                                 num_nodes=self.num_nodes, half_width=self.half_width, max_scale=self.max_scale)
        return fit.score_from_whitened(score_u)


def check_quadrature(num_nodes: int, half_width: float, max_scale: float) -> None:
    """Raise a ValueError naming the setting unless num_nodes is odd and >= 3 and the widths are positive."""
    if isinstance(num_nodes, bool) or not isinstance(num_nodes, int) or num_nodes < 3 or num_nodes % 2 == 0:
        raise ValueError(f"num_nodes must be an odd integer >= 3 (the sample is the middle node); got {num_nodes!r}.")
    if not half_width > 0 or not max_scale > 0:
        raise ValueError(f"half_width and max_scale must be positive; got {half_width!r} and {max_scale!r}.")


def ar_joint_score(context: Callable[[Tensor], Tensor], head: Callable[[Tensor, Tensor], Tensor], z: Tensor, *,
                   num_nodes: int = 33, half_width: float = 8.0, max_scale: float = 2.0,
                   min_scale: float = 1e-4) -> Tensor:
    """Joint score grad_z log q(z) of an autoregressive model given by univariate conditional scores.

    log q(z) = sum_j log q(z_j | c_j) with c_j = context(z)_j a function of z_<j, and the model
    gives only s_j(t) = h(t, c_j) = d/dt log q(t | c_j). Each conditional is normalised on its own
    line:

        log q(z_j | c_j) = -log int exp(Phi_j(t)) dt,   Phi_j(t) = int_{z_j}^t h(v, c_j) dv,

    so that

        d/dz_k log q(z) = s_k(z) + sum_{j > k} d/dz_k [log q(z_j | c_j)]_{z_j fixed},

    the second part through the contexts only: the derivatives of the later conditionals'
    log-normalisers, which AR-CSM does not model. Quadrature on the line of z_j: 2 G - 1 equally
    spaced points t = z_j + sigma_j u, u in [-half_width, half_width] (G = ``num_nodes``, the
    sample z_j in the middle), sigma_j = (-ds_j/dz_j)^(-1/2) at the sample (the conditional's
    standard deviation if it is Gaussian), clipped to [min_scale, max_scale] (max_scale where
    ds_j/dz_j >= 0). Phi at every point: Simpson's rule over pairs of intervals, and the integral
    of the quadratic through three points for the first interval of a pair; then the trapezoidal
    rule for int exp(Phi) (spectrally accurate for a smooth, decaying integrand). The points are
    constants for autograd (the integral does not depend on them once they cover the mass). Exact
    to rounding for Gaussian conditionals (Phi is then quadratic); cost d (2 G - 1) head
    evaluations and one backward pass per example.

    Args:
        context: z ``[B, d]`` -> c ``[B, d, F]``, c_j a function of z_<j (and fixed inputs).
        head: (t ``[B, K]``, c ``[B, K, F]``) -> s ``[B, K]``, position-wise.
        z: ``[B, d]``.
        num_nodes: G, odd (>= 3).
        half_width: half-width of the grid in units of sigma_j.
        max_scale, min_scale: bounds of sigma_j.

    Returns:
        ``[B, d]``, detached.
    """
    check_quadrature(num_nodes, half_width, max_scale)
    num, dim = z.shape
    with torch.enable_grad():
        z_leaf = z.detach().requires_grad_(True)
        c = context(z_leaf)
        s, ds = diagonal_conditional_scores(lambda v: head(v, c.detach()), z.detach(), create_graph=False)
        scale = torch.where(ds < 0, (-ds).clamp_min(1e-30).rsqrt(), torch.full_like(ds, max_scale))
        scale = scale.clamp(min_scale, max_scale)
        fine = 2 * num_nodes - 1  # the nodes and the midpoints between them
        u = torch.linspace(-half_width, half_width, fine, dtype=z.dtype, device=z.device)
        points = z.detach()[..., None] + scale[..., None] * u  # [B, d, 2G - 1]
        features = c.shape[-1]
        c_points = c[:, :, None, :].expand(num, dim, fine, features).reshape(num, dim * fine, features)
        s_points = head(points.reshape(num, dim * fine), c_points).reshape(num, dim, fine)
        step = scale * (2 * half_width / (fine - 1))  # [B, d], between neighbouring points
        s_0, s_1, s_2 = s_points[..., 0:-1:2], s_points[..., 1::2], s_points[..., 2::2]
        pairs = step[..., None] * (s_0 + 4 * s_1 + s_2) / 3  # Simpson over [t_2i, t_2i+2]
        halves = step[..., None] * (5 * s_0 + 8 * s_1 - s_2) / 12  # the quadratic's integral over [t_2i, t_2i+1]
        at_even = torch.cat([torch.zeros_like(pairs[..., :1]), pairs.cumsum(-1)], dim=-1)
        phi = torch.stack([at_even[..., :-1], at_even[..., :-1] + halves], dim=-1).flatten(-2)
        phi = torch.cat([phi, at_even[..., -1:]], dim=-1)  # Phi at all 2G - 1 points, from t_0
        phi = phi - phi[..., num_nodes - 1 : num_nodes]  # Phi(z_j) = 0 at the middle point
        ends = torch.ones(fine, dtype=z.dtype, device=z.device)
        ends[[0, -1]] = 0.5  # trapezoidal weights step * (1/2, 1, ..., 1, 1/2)
        log_q = -torch.logsumexp(phi + torch.log(step)[..., None] + torch.log(ends), dim=-1)  # log q(z_j | c_j)
        (cross,) = torch.autograd.grad(log_q.sum(), z_leaf, allow_unused=True)
    return s.detach() if cross is None else (s + cross).detach()


# --- the VAE -------------------------------------------------------------------------------------
ESTIMATOR_CLASSES = {"csm": ARLatentScoreEstimator, "ssm": LatentScoreEstimator}
"""The score estimator that each entropy-gradient method of ``hybrids.objectives.vae`` trains."""


@gin.configurable(module="hybrids.models")
class VAE(nn.Module):
    """Encoder, decoder, prior N(0, I) and (implicit encoders) the score estimator of q(z | x).

    One module holds every network so that the Trainer optimises them together; the objective
    (``hybrids.objectives.vae.VAEObjective``) gives each part only its own gradient. The buffer
    ``updates`` counts training updates (the objective's schedule of estimator and VAE updates; it
    is saved in checkpoints).

    Args:
        encoder: a :class:`GaussianEncoder` or an :class:`ImplicitEncoder`.
        decoder: a :class:`BernoulliDecoder`.
        estimator: None for a Gaussian encoder; for an implicit one an
            :class:`ARLatentScoreEstimator` or a :class:`LatentScoreEstimator`.

    Raises:
        TypeError: an encoder or decoder of another class.
        ValueError: mismatched data or latent sizes, or an estimator that does not fit the encoder.
    """

    def __init__(self, encoder: nn.Module = gin.REQUIRED, decoder: nn.Module = gin.REQUIRED,
                 estimator: nn.Module | None = None):
        super().__init__()
        if not isinstance(encoder, (GaussianEncoder, ImplicitEncoder)):
            raise TypeError("VAE.encoder must be a GaussianEncoder or an ImplicitEncoder; got "
                            f"{type(encoder).__name__}.")
        if not isinstance(decoder, BernoulliDecoder):
            raise TypeError(f"VAE.decoder must be a BernoulliDecoder; got {type(decoder).__name__}.")
        if isinstance(encoder, GaussianEncoder) and estimator is not None:
            raise ValueError("a Gaussian encoder has a closed-form entropy and uses no score estimator; "
                             "leave VAE.estimator None, or use an ImplicitEncoder.")
        if isinstance(encoder, ImplicitEncoder) and not isinstance(estimator, tuple(ESTIMATOR_CLASSES.values())):
            raise ValueError("an ImplicitEncoder needs a score estimator of q(z | x) for its entropy gradient: "
                             "bind VAE.estimator = @ARLatentScoreEstimator() (AR-CSM) or @LatentScoreEstimator() "
                             f"(SSM); got {type(estimator).__name__}.")
        parts = [encoder, decoder] + ([estimator] if estimator is not None else [])
        sizes = {(type(p).__name__, int(p.data_dim), int(p.latent_dim)) for p in parts}
        if len({s[1:] for s in sizes}) != 1:
            listing = ", ".join(f"{name} (data_dim {d}, latent_dim {l})" for name, d, l in sorted(sizes))
            raise ValueError(f"the VAE's parts disagree on their sizes: {listing}; bind them from the same "
                             "macros (DIM, LATENT_DIM).")
        self.encoder, self.decoder, self.estimator = encoder, decoder, estimator
        self.data_dim, self.latent_dim = int(encoder.data_dim), int(encoder.latent_dim)
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))

    @property
    def implicit(self) -> bool:
        """Whether the encoder is implicit."""
        return isinstance(self.encoder, ImplicitEncoder)

    def log_joint(self, x: Tensor, z: Tensor) -> Tensor:
        """log p(x | z) + log p(z), ``[..., B]`` for x ``[B, D]`` binary and z ``[..., B, d]``."""
        return self.decoder.log_prob(x, z) + standard_normal_log_prob(z)

    def encoder_fit(self, x: Tensor, num_samples: int, generator: torch.Generator | None = None) -> GaussianFit:
        """A Gaussian of q(z | x) per example: q itself for a Gaussian encoder, else the mean and
        covariance of ``num_samples`` fresh encoder draws (:func:`fit_gaussian`), without gradients."""
        with torch.no_grad():
            if not self.implicit:
                mu, log_var = self.encoder(x)
                return GaussianFit(mu, torch.diag_embed(torch.exp(0.5 * log_var)))
            return fit_gaussian(self.encoder.sample(x, generator, num_samples))

    def proposal(self, x: Tensor, generator: torch.Generator | None = None, *, kind: str = "mixture",
                 num_fit_samples: int = 128, inflation: float = 1.5, laplace_steps: int = 200
                 ) -> GaussianFit | MixtureProposal:
        """The importance-sampling proposal r(z | x) of :func:`importance_log_weights`.

        * ``'encoder'``: q(z | x) itself for a Gaussian encoder; for an implicit one the Gaussian
          fitted to ``num_fit_samples`` encoder draws, its scale times ``inflation``;
        * ``'laplace'``: the Laplace approximation of the posterior p(z | x) (:func:`laplace_fit`
          from the encoder's mean, ``laplace_steps`` Adam steps), its scale times ``inflation``;
        * ``'mixture'``: the equal mixture of the two (robust when the encoder is far from the
          posterior, e.g. a collapsed one, and when the posterior is far from Gaussian).

        Raises:
            ValueError: an unknown ``kind`` or ``inflation`` <= 0.
        """
        if kind not in PROPOSALS:
            raise ValueError(f"unknown proposal {kind!r}; choose one of {list(PROPOSALS)}.")
        if not inflation > 0:
            raise ValueError(f"inflation must be positive; got {inflation!r}.")
        fit = self.encoder_fit(x, num_fit_samples, generator)
        encoder = fit.inflated(inflation) if self.implicit else fit
        if kind == "encoder":
            return encoder
        laplace = laplace_fit(lambda z: self.log_joint(x, z), fit.loc, num_steps=laplace_steps).inflated(inflation)
        return laplace if kind == "laplace" else MixtureProposal((encoder, laplace))

    @torch.no_grad()
    def sample(self, num_samples: int, generator: torch.Generator | None = None) -> Tensor:
        """Decoder means sigmoid(f(z)) ``[N, D]`` in [0, 1] of z ~ N(0, I)."""
        z = randn((num_samples, self.latent_dim), generator, dtype=model_dtype(self), device=model_device(self))
        return torch.sigmoid(self.decoder(z))
