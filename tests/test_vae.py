"""VAEs with Gaussian and implicit encoders (hybrids.models.vae, hybrids.objectives.vae, hybrids.hooks.vae).

Closed forms used: a linear implicit encoder z = W_x x + W_e eps + b is secretly Gaussian,
q(z | x) = N(W_x x + b, W_e W_e^T), with entropy log|det W_e| + d log(2 pi e) / 2 and score
-(W_e W_e^T)^-1 (z - mu); a linear-Gaussian VAE p(z) = N(0, I), p(x | z) = N(A z + c, s^2 I) has
p(x) = N(c, A A^T + s^2 I) and a Gaussian posterior; Gaussian and logistic autoregressive
conditionals have closed-form joint log-densities.
"""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

from hybrids.data import ArrayDataset
from hybrids.models.vae import (VAE, ARLatentScoreEstimator, BernoulliDecoder, GaussianEncoder, GaussianFit,
                                ImplicitEncoder, LatentScoreEstimator, MixtureProposal, ar_joint_score, binarize,
                                fit_gaussian, importance_log_weights, laplace_fit, standard_normal_log_prob)
from hybrids.objectives.vae import (VAEObjective, csm_estimator_loss, entropy_surrogate, implicit_surrogate,
                                    ssm_estimator_loss)

F64 = torch.float64


def _gaussian_ar(d: int, seed: int):
    """An autoregressive view of N(mu, S): context(z)_j = (m_j(z_<j), v_j), head = -(t - m) / v."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(d, d, generator=g, dtype=F64) / math.sqrt(d)
    cov = a @ a.T + 0.1 * torch.eye(d, dtype=F64)  # conditional variances below max_scale^2 = 4
    mu = torch.randn(d, generator=g, dtype=F64)

    def context(z):
        out = []
        for j in range(d):
            w = torch.linalg.solve(cov[:j, :j], cov[:j, j]) if j else torch.zeros(0, dtype=F64)
            mean = mu[j] + (z[:, :j] - mu[:j]) @ w
            var = (cov[j, j] - cov[:j, j] @ w).expand_as(mean)
            out.append(torch.stack([mean, var], -1))
        return torch.stack(out, 1)

    def head(t, c):
        return -(t - c[..., 0]) / c[..., 1]

    z = mu + torch.randn(64, d, generator=g, dtype=F64) @ torch.linalg.cholesky(cov).T
    return context, head, z, -(z - mu) @ torch.linalg.inv(cov)


@settings(max_examples=15, deadline=None)
@given(d=st.integers(1, 5), seed=st.integers(0, 10_000))
def test_ar_joint_score_is_exact_for_gaussian_conditionals(d, seed):
    """The joint score from univariate conditional scores plus the quadrature-normalised cross terms
    equals -S^-1 (z - mu): to rounding on a grid of +-12 local scales (for Gaussian conditionals the
    quadrature is exact and only the truncation of the grid remains), to a relative 1e-3 on the
    default +-8 (a draw 4 scales from its conditional mean loses ~1e-4 of the mass). Catches:
    dropping the cross terms (returning the univariate scores, the AR-CSM diagonal), a wrong
    reference point of Phi (not zero at the sample), a sign error, a wrong local scale."""
    context, head, z, exact = _gaussian_ar(d, seed)
    wide = ar_joint_score(context, head, z, num_nodes=49, half_width=12.0)
    assert torch.allclose(wide, exact, rtol=1e-10, atol=1e-10)
    assert (ar_joint_score(context, head, z) - exact).norm() < 1e-3 * exact.norm()


def test_ar_joint_score_on_logistic_conditionals():
    """Non-Gaussian conditionals (logistic, location and scale depending on z_<j), z drawn from them:
    the joint score matches autograd of the exact log-density to 1e-2 (mean error < 1e-3). Catches a
    quadrature of lower order (the trapezoidal rule for Phi gave mean errors near 1e-2)."""
    g = torch.Generator().manual_seed(0)
    d, n = 3, 1000
    w = torch.randn(d, d, generator=g, dtype=F64) * 0.7

    def loc_logb(z):
        return z @ torch.tril(w, -1).T, 0.3 * torch.tanh(z @ torch.tril(w.flip(1), -1).T) - 0.5

    def head(t, c):
        b = c[..., 1].exp()
        return -torch.tanh((t - c[..., 0]) / b / 2) / b

    z = torch.zeros(n, d, dtype=F64)
    for j in range(d):  # ancestral draws
        loc, logb = loc_logb(z)
        p = torch.rand(n, generator=g, dtype=F64)
        z[:, j] = loc[:, j] + logb[:, j].exp() * torch.log(p / (1 - p))
    zz = z.clone().requires_grad_(True)
    loc, logb = loc_logb(zz)
    u = (zz - loc) / logb.exp()
    log_q = (-u - 2 * torch.nn.functional.softplus(-u) - logb).sum()
    (exact,) = torch.autograd.grad(log_q, zz)
    err = (ar_joint_score(lambda v: torch.stack(loc_logb(v), -1), head, z) - exact).abs()
    assert err.max() < 1e-2 and err.mean() < 1e-3


def test_gaussian_fit_whitening_and_score_chain_rule():
    """u = L^-1 (z - m) is standard normal for z ~ N(m, L L^T); L^-T times the score in u (-u) is
    the score in z, -(L L^T)^-1 (z - m); log_prob matches torch's MultivariateNormal. Catches
    L^-1 instead of L^-T in the chain rule, a missing log-determinant."""
    g = torch.Generator().manual_seed(1)
    a = torch.randn(3, 4, 4, generator=g, dtype=F64)
    cov = a @ a.transpose(-1, -2) + 0.1 * torch.eye(4, dtype=F64)
    fit = GaussianFit(torch.randn(3, 4, generator=g, dtype=F64), torch.linalg.cholesky(cov))
    z = fit.sample(5, g)
    u = fit.whiten(z)
    exact = -(torch.linalg.inv(cov) @ (z - fit.loc).unsqueeze(-1)).squeeze(-1)
    assert torch.allclose(torch.stack([fit.score_from_whitened(-v) for v in u]), exact, atol=1e-9)
    mvn = torch.distributions.MultivariateNormal(fit.loc, scale_tril=fit.scale_tril)
    assert torch.allclose(fit.log_prob(z), mvn.log_prob(z), atol=1e-9)
    big = fit_gaussian(fit.sample(20_000, g))
    assert torch.allclose(big.loc, fit.loc, atol=0.1)
    assert torch.allclose(big.scale_tril @ big.scale_tril.transpose(-1, -2), cov, rtol=0.1, atol=0.1)


# --- the entropy gradient --------------------------------------------------------------------------
def _linear_vae(data_dim=5, latent_dim=3, seed=0, estimator=None):
    torch.manual_seed(seed)
    enc = ImplicitEncoder(data_dim, latent_dim, hidden=())
    dec = BernoulliDecoder(latent_dim, data_dim, hidden=(7,))
    est = estimator or ARLatentScoreEstimator(data_dim, latent_dim, embed_dim=4, embed_hidden=(8,), hidden=(8,),
                                              context_features=3, head_hidden=(8,))
    return VAE(enc, dec, est).double()


def _whitened_noise(n, d, seed):
    """n draws whose sample mean is 0 and sample second moment is I exactly."""
    eps = torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=F64)
    eps = eps - eps.mean(0)
    chol = torch.linalg.cholesky(eps.T @ eps / n)
    return eps @ torch.linalg.inv(chol).T


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_surrogate_gradient_equals_the_analytic_entropy_gradient(seed):
    """Linear implicit encoder (secretly Gaussian) with its exact score: the gradient of the mean
    surrogate -(log p(x|z) + log p(z)) + stopgrad(s).z in every parameter (encoder and decoder)
    equals that of -(log p(x|z) + log p(z)) - H with the closed-form H = log|det W_e| + const, over
    noise draws with exact first and second moments per image (the identity holds in expectation;
    these draws make it exact). Catches: the entropy term's sign, a score that is not stopped (its
    dependence on W_e then adds a gradient), dropping the term."""
    model = _linear_vae(seed=seed)
    images = (torch.rand(4, 5, generator=torch.Generator().manual_seed(seed)) < 0.5).double()
    x = images.repeat_interleave(1000, 0)  # 4 images, each with its own block of exact-moment noise
    eps = torch.cat([_whitened_noise(1000, 3, seed + 10 * i) for i in range(4)])
    w_e = model.encoder.net[0].weight[:, 5:]

    def z_and_score():
        z = model.encoder(x, eps)
        mu = model.encoder(x, torch.zeros_like(eps))
        score = -(z - mu) @ torch.linalg.inv(w_e @ w_e.T)  # exact, and a function of W_e
        return z, score

    z, score = z_and_score()
    surrogate = implicit_surrogate(model, x, z, score)[0].mean()
    grads = torch.autograd.grad(surrogate, list(model.encoder.parameters()) + list(model.decoder.parameters()))
    z, _ = z_and_score()
    entropy = torch.linalg.slogdet(w_e)[1] + 1.5 * math.log(2 * math.pi * math.e)
    exact = (-(model.decoder.log_prob(x, z) + standard_normal_log_prob(z))).mean() - entropy
    wanted = torch.autograd.grad(exact, list(model.encoder.parameters()) + list(model.decoder.parameters()))
    for got, want in zip(grads, wanted):
        assert torch.allclose(got, want, atol=1e-9, rtol=1e-9)


def test_entropy_surrogate_stops_the_score():
    """Catches a surrogate that lets a score carrying a graph push gradients into the estimator."""
    z = torch.randn(4, 3, requires_grad=True)
    s = torch.randn(4, 3, requires_grad=True)
    entropy_surrogate(z, s).sum().backward()
    assert s.grad is None and torch.allclose(z.grad, s.detach())


@pytest.mark.parametrize("method", ["csm", "ssm"])
@pytest.mark.parametrize("moment_samples", [0, 8])
def test_each_loss_reaches_only_its_own_networks(method, moment_samples):
    """The estimator's loss gives no gradient to the encoder or decoder, the VAE surrogate none to
    the estimator. Catches: estimator samples drawn with the encoder's graph (not detached), a score
    returned with the estimator's graph."""
    data_dim, latent_dim = 6, 2
    estimator = (ARLatentScoreEstimator(data_dim, latent_dim, embed_dim=4, embed_hidden=(8,), hidden=(8,),
                                        context_features=3, head_hidden=(8,))
                 if method == "csm" else LatentScoreEstimator(data_dim, latent_dim, embed_dim=4, embed_hidden=(8,),
                                                              hidden=(8,)))
    torch.manual_seed(0)
    model = VAE(ImplicitEncoder(data_dim, latent_dim, hidden=(8,)), BernoulliDecoder(latent_dim, data_dim, (8,)),
                estimator)
    objective = VAEObjective(method, moment_samples=moment_samples, num_levels=17)
    batch = torch.randint(0, 17, (5, 1, 2, 3))
    vae_loss, est_loss, _ = objective.losses(model, batch, generator=torch.Generator().manual_seed(0))
    vae_part = list(model.encoder.parameters()) + list(model.decoder.parameters())
    est_part = list(model.estimator.parameters())
    assert all(g is None for g in torch.autograd.grad(est_loss, vae_part, allow_unused=True, retain_graph=True))
    assert all(g is None for g in torch.autograd.grad(vae_loss, est_part, allow_unused=True, retain_graph=True))
    assert all(g is not None for g in torch.autograd.grad(est_loss, est_part, allow_unused=True, retain_graph=True))
    assert all(g is not None for g in torch.autograd.grad(vae_loss, vae_part, allow_unused=True))


def test_estimator_updates_schedule_and_checkpointed_counter():
    """estimator_updates = 3: the VAE term enters on every third update only and the counter is a
    buffer of the model (saved in checkpoints, so a resumed run keeps the phase). Catches an
    off-by-one in the schedule, a counter kept in the objective."""
    model = _linear_vae().float()
    objective = VAEObjective("csm", estimator_updates=3, num_levels=2)
    batch = torch.randint(0, 2, (4, 5))
    flags = []
    for _ in range(6):
        vae_loss, est_loss, metrics = objective.losses(model, batch)
        flags.append(vae_loss is not None)
        assert est_loss is not None and metrics["vae_update"] == float(vae_loss is not None)
    assert flags == [False, False, True, False, False, True]
    assert int(model.state_dict()["updates"]) == 6


# --- estimators recover a Gaussian score ----------------------------------------------------------
def _train_estimator(method: str, steps: int, scale: float, moment_samples: int):
    """Fit an estimator to q(z | x) = N(A x, scale^2 C C^T) (correlated) with the library's losses,
    standardised by the moments of ``moment_samples`` draws per x (0: raw coordinates); return its
    score and the exact one at fresh draws."""
    torch.manual_seed(0)
    data_dim, latent_dim = 2, 3
    a = torch.tensor([[1.0, -0.5], [0.3, 0.8], [-0.7, 0.2]])
    chol = scale * torch.tensor([[1.0, 0.0, 0.0], [0.8, 0.6, 0.0], [-0.4, 0.5, 0.4]])
    if method == "csm":
        est = ARLatentScoreEstimator(data_dim, latent_dim, embed_dim=8, embed_hidden=(32,), hidden=(32, 32),
                                     context_features=8, head_hidden=(32,))
    else:
        est = LatentScoreEstimator(data_dim, latent_dim, embed_dim=8, embed_hidden=(32,), hidden=(64, 64))
    opt = torch.optim.Adam(est.parameters(), lr=3e-3)

    def draw(x, *many):
        return x @ a.T + torch.randn(*many, x.shape[0], latent_dim) @ chol.T

    def fit(x, z):
        return fit_gaussian(draw(x, moment_samples)) if moment_samples else GaussianFit.identity(z)

    for _ in range(steps):
        x = torch.randn(128, data_dim)
        z = draw(x)
        u = fit(x, z).whiten(z)
        loss = (csm_estimator_loss(est, u, x) if method == "csm" else ssm_estimator_loss(est, u, x)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    x = torch.randn(512, data_dim)
    z = draw(x)
    return est.score(z, x, fit(x, z)), -(z - x @ a.T) @ torch.linalg.inv(chol @ chol.T)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["csm", "ssm"])
@pytest.mark.parametrize("scale, moment_samples", [(0.5, 0), (0.02, 64)], ids=["raw", "narrow_standardised"])
def test_estimators_recover_the_score_of_a_correlated_gaussian(method, scale, moment_samples):
    """Trained (800 Adam steps) on draws of q(z | x) = N(A x, S) with correlated coordinates, the
    AR-CSM estimator (through its quadrature joint score) and the SSM estimator recover
    grad_z log q = -S^-1 (z - A x) to a relative squared error below 0.2 (measured 0.02-0.13): in raw
    coordinates (std ~0.5), and for a q 25 times narrower (scores 25 times larger) in coordinates
    whitened per x by the mean and covariance of 64 draws. Catches: the AR joint score without its cross
    terms (0.6), a sign error in either loss, a standardisation not undone (scores 25 times too small)."""
    score, exact = _train_estimator(method, 800, scale, moment_samples)
    rel = (score - exact).pow(2).sum() / exact.pow(2).sum()
    assert rel < 0.2, float(rel)


# --- importance sampling -----------------------------------------------------------------------------
def _linear_gaussian(d: int, data_dim: int, seed: int):
    """p(z) = N(0, I), p(x | z) = N(A z + c, s^2 I): log p(x, z), exact log p(x) and the posterior."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(data_dim, d, generator=g, dtype=F64)
    c = torch.randn(data_dim, generator=g, dtype=F64)
    s2 = 0.3
    x = c + torch.randn(6, d, generator=g, dtype=F64) @ a.T + s2 ** 0.5 * torch.randn(6, data_dim, generator=g,
                                                                                      dtype=F64)

    def log_joint(z):
        resid = x - z @ a.T - c
        lik = -0.5 * resid.pow(2).sum(-1) / s2 - 0.5 * data_dim * math.log(2 * math.pi * s2)
        return lik + standard_normal_log_prob(z)

    marginal = torch.distributions.MultivariateNormal(c, a @ a.T + s2 * torch.eye(data_dim, dtype=F64))
    post_cov = torch.linalg.inv(torch.eye(d, dtype=F64) + a.T @ a / s2)
    post_mean = (x - c) @ a @ post_cov / s2
    posterior = GaussianFit(post_mean, torch.linalg.cholesky(post_cov).expand(6, d, d))
    return log_joint, marginal.log_prob(x), posterior


@settings(max_examples=10, deadline=None)
@given(d=st.integers(1, 4), data_dim=st.integers(1, 6), seed=st.integers(0, 10_000))
def test_importance_sampling_is_exact_with_the_posterior_as_proposal(d, data_dim, seed):
    """With r = p(z | x) every weight equals p(x), so log (1/K) sum w = log p(x) for any K; the
    Laplace fit of a quadratic log-joint is that posterior. Catches: a sign or a missing
    log-determinant in log r, draws L^T eps instead of L eps, a wrong Hessian or Newton step."""
    log_joint, exact, posterior = _linear_gaussian(d, data_dim, seed)
    g = torch.Generator().manual_seed(seed)
    log_w = importance_log_weights(log_joint, posterior, 7, g, chunk=3)
    assert log_w.shape == (7, 6)
    assert torch.allclose(log_w, exact.expand(7, -1), atol=1e-8)
    laplace = laplace_fit(log_joint, torch.zeros(6, d, dtype=F64), num_steps=5)
    assert torch.allclose(laplace.loc, posterior.loc, atol=1e-8)
    assert torch.allclose(laplace.scale_tril, posterior.scale_tril, atol=1e-8)


def test_importance_sampling_is_unbiased_in_p_and_a_lower_bound_in_log():
    """A poor proposal (shifted, too wide) and the defensive mixture of it with the posterior: the
    mean of p-hat / p(x) over repeats is 1 within 4 standard errors, and the mean of log p-hat lies
    below log p(x) and rises with K. Catches: a mixture density without its 1/C, draws that do not
    follow the mixture (e.g. always its first component)."""
    log_joint, exact, posterior = _linear_gaussian(2, 3, 0)
    poor = GaussianFit(posterior.loc + 0.7, 2.0 * posterior.scale_tril)
    g = torch.Generator().manual_seed(0)
    for proposal in (poor, MixtureProposal((poor, posterior))):
        log_w = importance_log_weights(log_joint, proposal, 20 * 400, g).reshape(400, 20, 6)
        ratio = torch.exp(torch.logsumexp(log_w, 1) - math.log(20) - exact)  # [400, 6]
        assert abs(ratio.mean() - 1) < 4 * ratio.std() / math.sqrt(ratio.numel())
        at_2 = (torch.logsumexp(log_w[:, :2], 1) - math.log(2)).mean(0)
        at_20 = (torch.logsumexp(log_w, 1) - math.log(20)).mean(0)
        assert bool((at_2 < at_20).all() and (at_20 < exact).all())


def test_mixture_proposal_density_matches_its_draws():
    """The mixture's log_prob is the density of its draws: E_r[N(z; 0, I) / r(z)] = 1 (an
    importance-sampling identity). Catches draws from the wrong mix of components (always the
    first one: the mean is then about 0.15)."""
    g = torch.Generator().manual_seed(3)
    a = GaussianFit(torch.zeros(1, 2, dtype=F64), 0.5 * torch.eye(2, dtype=F64)[None])
    b = GaussianFit(torch.ones(1, 2, dtype=F64), 2.0 * torch.eye(2, dtype=F64)[None])
    mix = MixtureProposal((a, b))
    z = mix.sample(200_000, g)
    ratio = torch.exp(standard_normal_log_prob(z) - mix.log_prob(z))
    assert abs(ratio.mean() - 1) < 4 * ratio.std() / math.sqrt(ratio.numel())


# --- the hooks ----------------------------------------------------------------------------------------
def _constant_decoder_vae(levels: int):
    """A Gaussian-encoder VAE whose encoder outputs N(0, I) and whose decoder ignores z."""
    torch.manual_seed(0)
    model = VAE(GaussianEncoder(6, 2, hidden=(4,)), BernoulliDecoder(2, 6, hidden=(4,)))
    with torch.no_grad():
        for net in (model.encoder.net, model.decoder.net):
            net[-1].weight.zero_()
        model.encoder.net[-1].bias.zero_()
        model.decoder.net[-1].bias.copy_(torch.linspace(-2.0, 2.0, 6))
    return model.eval()


def _dataset(levels: int, k: torch.Tensor) -> ArrayDataset:
    return ArrayDataset("digits", k, torch.zeros(k.shape[0], dtype=torch.long), levels, None)


def test_vae_likelihood_eval_is_exact_when_every_proposal_is_the_prior():
    """Decoder ignoring z and encoder = prior: the Laplace fit and the encoder are N(0, I), so every
    weight is p(x) = prod_i Bernoulli(x_i; sigmoid(b_i)) and the hook's NLL is exact (levels 0 and
    K - 1 binarise deterministically); K/10 agrees, ESS = K; bits/dim = nats / (D ln 2). Catches
    errors in the hook's plumbing: units, the K/10 slice, the ESS formula, the binarisation."""
    levels = 17
    model = _constant_decoder_vae(levels)
    k = torch.tensor([[0, 16, 16, 0, 0, 16], [16, 16, 16, 16, 0, 0], [0, 0, 0, 0, 0, 0]]).reshape(3, 1, 2, 3)
    from hybrids.hooks.vae import vae_likelihood_eval

    out = vae_likelihood_eval(model, _dataset(levels, k), device=torch.device("cpu"),
                              generator=torch.Generator().manual_seed(0), num_importance_samples=20,
                              inflation=1.0, num_examples=3, batch_size=2)
    b = torch.linspace(-2.0, 2.0, 6)
    x = (k.reshape(3, 6) == 16).float()
    exact = -(x * b - torch.nn.functional.softplus(b)).sum(-1).double()
    assert out["nll_nats"]["mean"] == pytest.approx(float(exact.mean()), abs=1e-4)
    assert out["nll_nats_k10"]["mean"] == pytest.approx(float(exact.mean()), abs=1e-4)
    assert out["k10_minus_k_nats"]["mean"] == pytest.approx(0.0, abs=1e-4)
    assert out["ess_fraction"] == pytest.approx(1.0, abs=1e-4)
    assert out["nll_bpd"]["mean"] == pytest.approx(float(exact.mean()) / (6 * math.log(2)), abs=1e-4)
    assert out["num_examples"] == 3 and out["num_importance_samples"] == 20


def test_vae_sampler_decodes_prior_draws_to_levels():
    """Decoder ignoring z: the 'samples' output is round(sigmoid(b) (K - 1)) everywhere, the
    Bernoulli draws take levels 0 and K - 1 only, both shaped like the data."""
    from hybrids.hooks.vae import vae_sampler

    model = _constant_decoder_vae(17)
    data = _dataset(17, torch.zeros(2, 1, 2, 3, dtype=torch.long))
    out = vae_sampler(model, data, device=torch.device("cpu"), generator=torch.Generator().manual_seed(0),
                      num_samples=5)
    mean = torch.round(torch.sigmoid(torch.linspace(-2.0, 2.0, 6)) * 16).long().reshape(1, 2, 3)
    assert out["samples"].shape == (5, 1, 2, 3) and bool((out["samples"] == mean).all())
    assert set(out["bernoulli"].unique().tolist()) <= {0, 16}


# --- pieces ------------------------------------------------------------------------------------------
@settings(max_examples=10, deadline=None)
@given(latent_dim=st.integers(1, 5), seed=st.integers(0, 1000))
def test_ar_estimator_contexts_are_causal_and_conditioned_on_x(latent_dim, seed):
    """c_j depends on u_<j only, and every c_j (c_1 included) on x. Catches: a mask leaking u_j,
    an x-embedding that does not reach the MADE's output (c_1 would then ignore x)."""
    torch.manual_seed(seed)
    est = ARLatentScoreEstimator(4, latent_dim, embed_dim=3, embed_hidden=(5,), hidden=(6,), context_features=2,
                                 head_hidden=(4,)).double()
    u = torch.randn(1, latent_dim, dtype=F64)
    x = torch.randn(1, 4, dtype=F64)
    jac_u = torch.autograd.functional.jacobian(lambda v: est.context(v, x), u)[0, :, :, 0]  # [d, F, d]
    for j in range(latent_dim):
        assert bool((jac_u[j, :, j:] == 0).all())
    jac_x = torch.autograd.functional.jacobian(lambda v: est.context(u, v), x)[0, :, :, 0]  # [d, F, D]
    assert bool((jac_x.abs().sum((1, 2)) > 0).all())


def test_binarize_draws_with_the_level_probabilities():
    """b = 1 with probability k / (K - 1): levels 0 and K - 1 are deterministic, the middle one is
    a fair coin. Catches dividing by K instead of K - 1."""
    k = torch.tensor([0, 8, 16]).repeat(20_000).reshape(-1, 1, 1, 3)
    b = binarize(k, 17, torch.Generator().manual_seed(0))
    assert b.shape == (20_000, 3)
    assert b[:, 0].sum() == 0 and b[:, 2].sum() == 20_000 and abs(float(b[:, 1].mean()) - 0.5) < 0.02


def test_gaussian_encoder_entropy_matches_torch():
    log_var = torch.randn(4, 3, dtype=F64)
    expected = torch.distributions.Normal(torch.zeros(4, 3, dtype=F64), torch.exp(0.5 * log_var)).entropy().sum(-1)
    assert torch.allclose(GaussianEncoder.entropy(log_var), expected)


def _likelihood_hook(**settings):
    from hybrids.hooks.vae import vae_likelihood_eval

    return vae_likelihood_eval(_constant_decoder_vae(17), _dataset(17, torch.zeros(2, 1, 2, 3, dtype=torch.long)),
                               device=torch.device("cpu"), generator=torch.Generator(), num_examples=2,
                               batch_size=2, **settings)


@pytest.mark.parametrize("build, match", [
    (lambda: ImplicitEncoder(4, 3, noise_dim=2), "noise_dim = 2 is below latent_dim = 3"),
    (lambda: VAE(ImplicitEncoder(4, 2), BernoulliDecoder(2, 4)), "needs a score estimator"),
    (lambda: VAE(GaussianEncoder(4, 2), BernoulliDecoder(2, 4), LatentScoreEstimator(4, 2)), "closed-form entropy"),
    (lambda: VAE(GaussianEncoder(4, 2), BernoulliDecoder(3, 4)), "disagree on their sizes"),
    (lambda: VAEObjective("elbo"), "choose one of"),
    (lambda: VAEObjective("gaussian", estimator_updates=2), "apply to implicit encoders"),
    (lambda: VAEObjective("csm", n_particles=2), "applies to estimator = 'ssm' only"),
    (lambda: VAEObjective("csm", num_levels=None), "binarises integer images"),
    (lambda: ARLatentScoreEstimator(4, 2, num_nodes=4), "odd integer"),
    (lambda: fit_gaussian(torch.zeros(3, 1, 3)), "more than 3 samples"),
    (lambda: _constant_decoder_vae(17).proposal(torch.zeros(1, 6), kind="prior"), "unknown proposal"),
    (lambda: _likelihood_hook(num_importance_samples=5), "must be >= 10"),
    (lambda: _likelihood_hook(proposal="prior"), "unknown vae_likelihood_eval.proposal"),
])
def test_bad_inputs_name_the_problem(build, match):
    with pytest.raises((ValueError, TypeError), match=match):
        build()


def test_objective_refuses_a_model_of_another_method():
    model = VAE(GaussianEncoder(6, 2, hidden=(4,)), BernoulliDecoder(2, 6, hidden=(4,)))
    with pytest.raises(ValueError, match="needs VAE.encoder = @ImplicitEncoder"):
        VAEObjective("ssm", num_levels=17)(model, torch.zeros(2, 6, dtype=torch.long))
    implicit = _linear_vae(data_dim=6, latent_dim=2).float()
    with pytest.raises(ValueError, match="@LatentScoreEstimator"):
        VAEObjective("ssm", num_levels=17)(implicit, torch.zeros(2, 6, dtype=torch.long))
    with pytest.raises(ValueError, match="needs VAE.encoder = @GaussianEncoder"):
        VAEObjective("gaussian", num_levels=17)(implicit, torch.zeros(2, 6, dtype=torch.long))
    with pytest.raises(ValueError, match="cannot give a covariance of the 2 latent dimensions"):
        VAEObjective("csm", moment_samples=2, num_levels=17)(implicit, torch.zeros(2, 6, dtype=torch.long))


@pytest.mark.slow
def test_reproduce_arcsm_vae_at_smoke_scale(tmp_path):
    """`python -m experiments.reproduce --table=arcsm_vae --scale=smoke` in process, for the AR-CSM
    row at latent 8 (tests/test_reproduce.py runs every row): it trains, evaluates and samples, and
    reports a finite NLL (nats and bits/dim), its K/10 twin and FD/KID with their floors."""
    from experiments.reproduce import reproduce
    from experiments.tables import TABLES

    chosen = next(row for row in TABLES["arcsm_vae"].rows if row.label == "implicit encoder + AR-CSM, latent 8")
    rows = reproduce("arcsm_vae", "smoke", tmp_path, in_process=True, rows=[chosen.slug])
    done = [r for r in rows if r["status"] == "done"]
    assert [r["row"] for r in done] == [chosen.label], [(r["row"], r["status"], r["error"]) for r in rows]
    for column in ("NLL (nats)", "NLL at K/10 (nats)", "NLL (bits/dim)", "ESS / K", "FD (see metric)",
                   "KID floor (real)"):
        assert math.isfinite(float(done[0]["ours"][column])), column
    assert (tmp_path / chosen.slug / "samples" / "vae_sampler_samples.png").exists()
