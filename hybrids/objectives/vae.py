"""The VAE objective: the ELBO with a closed-form entropy (Gaussian encoder) or with the entropy
gradient of an implicit encoder from a score estimator refitted during training.

ELBO(x) = E_q[log p(x | z) + log p(z)] + H[q(. | x)] on binarised x (``hybrids.models.vae``).

**Gaussian encoder** (``estimator='gaussian'``): z = mu + sigma eps (reparameterised) and the
closed-form entropy, per example l = -(log p(x | z) + log p(z)) - H[q(. | x)].

**Implicit encoder** (``'csm'`` or ``'ssm'``; Song, Garg, Shi and Ermon, "Sliced Score Matching: A
Scalable Approach to Density and Score Estimation", UAI 2019). With z = g_phi(x, eps),

    H = -E_eps[log q_phi(g_phi(x, eps) | x)],
    grad_phi H = -E_eps[(grad_z log q_phi(z | x))^T dz/dphi] - E_q[grad_phi log q_phi(z | x)],

and the last term is int grad_phi q_phi(z | x) dz = grad_phi 1 = 0. So with s ~ grad_z log q(z | x)
from an estimator, the surrogate

    l = -(log p(x | z) + log p(z)) + stopgrad(s(z, x)) . z

has the gradient of -ELBO in phi (and in the decoder, which the entropy does not involve); its
value is not -ELBO. The estimator is refitted on fresh encoder samples, detached from the encoder,
in standardised coordinates u = L^-1 (z - m), (m, L L^T) the mean and covariance of
``moment_samples`` further fresh draws per example (``hybrids.models.vae.GaussianFit``; 0: u = z,
as in the papers); its score in z is L^-T times its score in u. The fit's sampling noise, which
the estimator cannot see, biases the scores brought back to z: for a correlated Gaussian q the
relative squared bias was 0.033 (d = 8, M = 64), 0.006 (d = 8, M = 128; d = 16, M = 256) and 0.026
(d = 16, M = 128). Standardising each coordinate alone is nearly unbiased but lets q degenerate:
in CPU runs its correlation matrix reached eigenvalues of 2e-4 and the estimator lost the narrow
directions (cosine 0.04 with the Gaussian-fit score, against 0.93 with the full whitening).

* ``'csm'``: an autoregressive conditional score model (``ARLatentScoreEstimator``; Meng, Yu, Song,
  Song and Ermon, "Autoregressive Score Matching", NeurIPS 2020) trained by composite score
  matching, L_CSM = E sum_j [s_j^2 / 2 + ds_j/du_j]; its joint score for the surrogate normalises
  the one-dimensional conditionals by quadrature (``hybrids.models.vae.ar_joint_score``);
* ``'ssm'``: a joint score network (``LatentScoreEstimator``) trained by sliced score matching with
  variance reduction, L_SSM-VR = E[v^T (dt/du) v + ||t||^2 / 2], v Rademacher.

One Trainer update minimises the sum of the two losses; each part gets only its own gradient (the
estimator sees detached samples, the surrogate a detached score). ``estimator_updates = n`` gives n
estimator updates per VAE update: the VAE term enters the loss on every n-th update only (counted by
the model's ``updates`` buffer, so a resumed run keeps the schedule), the estimator term on all.
"""
from __future__ import annotations

from typing import Any

import gin
import torch
import torch.distributed as dist
from torch import Tensor, nn

from hybrids.models.vae import (ESTIMATOR_CLASSES, VAE, GaussianEncoder, GaussianFit, binarize,
                                standard_normal_log_prob)
from hybrids.objectives.batches import batch_data
from hybrids.objectives.csm import csm_per_example
from hybrids.objectives.score_matching import sample_projections, sliced_jacobian_term
from hybrids.tensors import model_dtype, randn

ESTIMATORS = ("gaussian", "csm", "ssm")


def entropy_surrogate(z: Tensor, score: Tensor) -> Tensor:
    """stopgrad(score) . z per example, ``[B]``: its gradient in the encoder's parameters is
    score^T dz/dphi, i.e. -grad_phi H[q] in expectation when score = grad_z log q(z | x).

    Args:
        z: ``[B, d]`` encoder samples (in the encoder's graph).
        score: ``[B, d]`` estimate of grad_z log q(z | x) at z.
    """
    return (score.detach() * z).sum(-1)


def implicit_surrogate(model: VAE, x: Tensor, z: Tensor, score: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The implicit encoder's per-example surrogate -(log p(x | z) + log p(z)) + stopgrad(s) . z.

    Args:
        model: the VAE.
        x: ``[B, D]`` binary data.
        z: ``[B, d]`` samples of q(z | x), in the encoder's graph.
        score: ``[B, d]`` estimate of grad_z log q(z | x) at z.

    Returns:
        ``(surrogate, log p(x | z), log p(z))``, each ``[B]``.
    """
    log_px = model.decoder.log_prob(x, z)
    log_pz = standard_normal_log_prob(z)
    return -(log_px + log_pz) + entropy_surrogate(z, score), log_px, log_pz


def csm_estimator_loss(estimator: nn.Module, u: Tensor, x: Tensor) -> Tensor:
    """Composite score matching sum_j [s_j^2 / 2 + ds_j/du_j] of an AR estimator at samples u, ``[B]``."""
    with torch.enable_grad():
        u = u.detach().requires_grad_(True)
        s, ds = estimator.conditional_scores(u, x, create_graph=True)
    return csm_per_example(s, ds)


def ssm_estimator_loss(estimator: nn.Module, u: Tensor, x: Tensor, n_particles: int = 1,
                       generator: torch.Generator | None = None) -> Tensor:
    """Sliced score matching with variance reduction at samples u,
    mean_m v_m^T (dt/du) v_m + ||t||^2 / 2 with Rademacher v_m, ``[B]``."""
    with torch.enable_grad():
        u = u.detach().requires_grad_(True)
        t = estimator(u, x)
        v = sample_projections(u, n_particles, "rademacher", generator)
        return sliced_jacobian_term(t, u, v, create_graph=True) + 0.5 * t.pow(2).sum(-1)


@gin.configurable(module="hybrids.objectives")
class VAEObjective:
    """``objective(model, batch, *, generator=None) -> (loss, metrics)`` for a :class:`hybrids.models.vae.VAE`.

    Data: integer levels, binarised stochastically every time (b ~ Bernoulli(k / (K - 1))).
    Loss: the batch mean of the per-example -ELBO (``'gaussian'``) or of the surrogate (module
    docstring), plus the estimator's loss (``'csm'``/``'ssm'``). Metrics (every update):
    ``reconstruction_nats`` (-log p(x | z)), ``prior_nats`` (-log p(z)), and ``entropy_nats`` with
    ``neg_elbo_nats`` (Gaussian), or ``estimator_loss`` with ``vae_update`` (1 when the VAE term was
    in the loss).

    Args:
        estimator: ``'gaussian'`` (closed-form entropy), ``'csm'`` (AR-CSM estimator) or ``'ssm'``
            (SSM estimator); it must match the model's encoder and estimator.
        estimator_updates: n >= 1 estimator updates per VAE update (implicit encoders only).
        moment_samples: M fresh encoder draws per example whose mean and covariance standardise
            the estimator's input (M > latent dimension), or 0 for none (implicit encoders only).
        num_levels: K of the integer data.
        n_particles: Rademacher projections per example of SSM.

    Raises:
        ValueError: an unknown estimator, n < 1, a setting bound where it does not apply, or
            continuous data (``num_levels`` None); at the first call, a model that does not fit.
    """

    def __init__(self, estimator: str = gin.REQUIRED, estimator_updates: int = 1, moment_samples: int = 0,
                 num_levels: int | None = 256, n_particles: int = 1):
        if estimator not in ESTIMATORS:
            raise ValueError(f"unknown VAEObjective.estimator {estimator!r}; choose one of {list(ESTIMATORS)}.")
        for name, value, low in (("estimator_updates", estimator_updates, 1), ("n_particles", n_particles, 1),
                                 ("moment_samples", moment_samples, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"VAEObjective.{name} must be an integer >= {low}; got {value!r}.")
        if estimator == "gaussian" and (estimator_updates != 1 or moment_samples != 0):
            raise ValueError("VAEObjective.estimator_updates and moment_samples apply to implicit encoders ('csm', "
                             "'ssm'); a Gaussian encoder has no estimator. Remove the bindings.")
        if estimator != "ssm" and n_particles != 1:
            raise ValueError("VAEObjective.n_particles (SSM projections) applies to estimator = 'ssm' only; remove "
                             "the binding.")
        if num_levels is None:
            raise ValueError("VAEObjective binarises integer images (levels k -> Bernoulli(k / (K - 1))); set "
                             "VAEObjective.num_levels to the data's K (the NUM_LEVELS macro).")
        self.estimator, self.estimator_updates = estimator, estimator_updates
        self.moment_samples, self.num_levels, self.n_particles = moment_samples, int(num_levels), n_particles

    def check_model(self, model: nn.Module) -> None:
        """Raise naming the bindings when ``model`` does not fit ``estimator`` or ``moment_samples``."""
        if not isinstance(model, VAE):
            raise TypeError(f"VAEObjective trains a hybrids.models.vae.VAE; got {type(model).__name__}.")
        if self.estimator == "gaussian":
            if model.implicit:
                raise ValueError("VAEObjective.estimator = 'gaussian' needs VAE.encoder = @GaussianEncoder(); the "
                                 "model has an implicit encoder (use estimator 'csm' or 'ssm').")
            return
        wanted = ESTIMATOR_CLASSES[self.estimator]
        if not model.implicit or not isinstance(model.estimator, wanted):
            raise ValueError(
                f"VAEObjective.estimator = {self.estimator!r} needs VAE.encoder = @ImplicitEncoder() and "
                f"VAE.estimator = @{wanted.__name__}(); the model has {type(model.encoder).__name__} and "
                f"{type(model.estimator).__name__}.")
        if 0 < self.moment_samples <= model.latent_dim:
            raise ValueError(f"VAEObjective.moment_samples = {self.moment_samples} cannot give a covariance of the "
                             f"{model.latent_dim} latent dimensions; use more than {model.latent_dim} (or 0: no "
                             "standardisation).")

    def losses(self, model: VAE, batch: Any, *, generator: torch.Generator | None = None
               ) -> tuple[Tensor | None, Tensor | None, dict[str, Any]]:
        """The VAE term and the estimator term separately (``__call__`` adds them).

        Returns:
            ``(vae_loss, estimator_loss, metrics)``: scalars, vae_loss None on an estimator-only
            update, estimator_loss None for the Gaussian encoder.
        """
        self.check_model(model)
        x = binarize(batch_data(batch), self.num_levels, generator).to(model_dtype(model))
        if self.estimator == "gaussian":
            mu, log_var = model.encoder(x)
            z = mu + torch.exp(0.5 * log_var) * randn(mu.shape, generator, dtype=mu.dtype, device=mu.device)
            log_px, log_pz = model.decoder.log_prob(x, z), standard_normal_log_prob(z)
            entropy = GaussianEncoder.entropy(log_var)
            neg_elbo = -(log_px + log_pz + entropy)
            return neg_elbo.mean(), None, {
                "reconstruction_nats": -log_px.detach(), "prior_nats": -log_pz.detach(),
                "entropy_nats": entropy.detach(), "neg_elbo_nats": neg_elbo.detach()}
        vae_step = True
        if torch.is_grad_enabled():
            if self.estimator_updates > 1 and dist.is_initialized() and dist.get_world_size() > 1:
                raise ValueError("VAEObjective.estimator_updates > 1 leaves the VAE's parameters without gradients "
                                 "on estimator-only updates, which DistributedDataParallel does not allow; train "
                                 "in one process or set VAEObjective.estimator_updates = 1.")
            vae_step = int(model.updates) % self.estimator_updates == self.estimator_updates - 1
            model.updates += 1
        with torch.no_grad():  # fresh samples for the estimator, no gradient to the encoder
            z_fit = model.encoder.sample(x, generator)
            fit = model.encoder_fit(x, self.moment_samples, generator) if self.moment_samples \
                else GaussianFit.identity(z_fit)
            u = fit.whiten(z_fit)
        if self.estimator == "csm":
            est = csm_estimator_loss(model.estimator, u, x)
        else:
            est = ssm_estimator_loss(model.estimator, u, x, self.n_particles, generator)
        with torch.set_grad_enabled(vae_step and torch.is_grad_enabled()):
            z = model.encoder.sample(x, generator)
            score = model.estimator.score(z, x, fit) if vae_step else torch.zeros_like(z)
            surrogate, log_px, log_pz = implicit_surrogate(model, x, z, score)
        metrics = {"reconstruction_nats": -log_px.detach(), "prior_nats": -log_pz.detach(),
                   "estimator_loss": est.detach(), "vae_update": float(vae_step)}
        return (surrogate.mean() if vae_step else None), est.mean(), metrics

    def __call__(self, model: VAE, batch: Any, *, generator: torch.Generator | None = None) -> tuple[Tensor, dict]:
        vae_loss, est_loss, metrics = self.losses(model, batch, generator=generator)
        terms = [t for t in (vae_loss, est_loss) if t is not None]
        return sum(terms[1:], terms[0]), metrics
