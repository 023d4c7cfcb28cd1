"""The source papers' tables as data: rows (gin row files), columns (results keys), paper values.

A column's ``key`` is a flattened ``results.json`` key, ``<hook name>.<key>[.<subkey>]`` (see
``experiments.cells.flatten_results``), or a tuple of such keys of which the first one present
is shown (rows of different methods may report one quantity through different hooks). Paper values are copied from the papers (via
docs/methods.md where the extracts lost them); ``None`` where the extract does not have them.
"""
from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from typing import Any

# scale -> (preset gin files appended to every row, extra bindings by table name or '*')
SCALES: dict[str, tuple[tuple[str, ...], dict[str, tuple[str, ...]]]] = {
    "smoke": (("presets/cpu_small.gin", "presets/smoke.gin"), {}),
    "cpu": (("presets/cpu_small.gin",), {}),
    "small": (("presets/cpu_small.gin", "presets/mnist_small.gin"), {}),
    "paper": (("presets/paper.gin",), {}),
}


@dataclass(frozen=True)
class Column:
    """One reported quantity: ``name`` in the table, ``key`` (or alternative keys, first present
    wins) in the flattened results."""

    name: str
    key: str | tuple[str, ...]

    def value(self, flat: dict[str, Any]) -> Any:
        """This column's value in flattened results (None when no key is present)."""
        keys = (self.key,) if isinstance(self.key, str) else self.key
        return next((flat[k] for k in keys if k in flat), None)


@dataclass(frozen=True)
class Row:
    """One paper row: its gin row file(s), extra bindings and the paper's values by column name."""

    label: str
    gin_files: tuple[str, ...]
    bindings: tuple[str, ...] = ()
    paper: tuple[tuple[str, float | None], ...] = ()

    @property
    def slug(self) -> str:
        """Directory name of the row's workdir."""
        return re.sub(r"[^A-Za-z0-9.+-]+", "_", self.label).strip("_").lower()

    def command(self, scale: str, extra_bindings: tuple[str, ...] | list[str] = (),
                data_dir: str | None = None) -> str:
        """The ``experiments.run`` command that produces this row at ``scale`` (reading its data
        from ``data_dir`` when given)."""
        files = [*self.gin_files, *SCALES[scale][0]]
        parts = ["python -m experiments.run", *(f"--gin_file={f}" for f in files)]
        parts += [_shell_flag("gin_bindings", b) for b in (*self.bindings, *extra_bindings)]
        parts += [_shell_flag("data_dir", data_dir)] if data_dir else []
        return " ".join(parts + [f"--workdir=runs/{self.slug}", "--mode=all"])


def _shell_flag(name: str, value: str) -> str:
    """``--name=value`` as one shell word: the value in single quotes, in double quotes when it
    holds a single quote (gin strings: ``"x = 'exact'"``), else quoted by ``shlex``; a value with
    no special characters is left bare."""
    if value == shlex.quote(value):
        return f"--{name}={value}"
    if "'" not in value:
        return f"--{name}='{value}'"
    if not any(c in value for c in '"$`\\!'):
        return f'--{name}="{value}"'
    return shlex.quote(f"--{name}={value}")


@dataclass(frozen=True)
class Table:
    name: str
    title: str
    source: str
    columns: tuple[Column, ...]
    rows: tuple[Row, ...]
    notes: tuple[str, ...] = field(default=())
    codec_reference: "CodecReference | None" = None


@dataclass(frozen=True)
class CodecReference:
    """Reference rows of lossless codecs (PNG, WebP) on the same test images as a bits/dim column.

    ``column``: the table's column the codecs' bits/dim go in; ``num_examples_key``: the flattened
    results key holding how many test images that column used (the codecs encode the first that
    many images of the rows' dataset). See ``experiments.references``.
    """

    column: str
    num_examples_key: str


_QUALITY_COLUMNS = (
    Column("FD (see metric)", "sample_fd_eval.fd"),
    Column("FD floor (real)", "sample_fd_eval.floor.fd"),
    Column("KID (see metric)", "sample_fd_eval.kid.kid"),
    Column("KID floor (real)", "sample_fd_eval.floor.kid.kid"),
)
"""Sample quality of the row's sampler with the real-data floor (``sample_fd_eval``)."""

_GAP_NOTE = (
    "Train/test gap: bits/dim on as many training as test images, test - train (train_test_gap_eval); a model that "
    "memorised its N training images could reach log2(N) bits per image on them (MNIST: log2(60000) / 784 = "
    "0.020 bits/dim), so a gap far above its standard error is overfitting, and a training NLL near that "
    "bound is memorisation.")
_CODEC_NOTE = (
    "PNG and WebP rows: bits/dim of the same test images losslessly encoded one file per image, headers "
    "included (hybrids.metrics.compression); a likelihood model that does not beat them has learned little.")

_NCML_COLUMNS = (
    Column("NLL pi=0 (bpd)", "pi_perturbation_eval.bpd.0.0"),
    Column("NLL pi=0.5 (bpd)", "pi_perturbation_eval.bpd.0.5"),
    Column("NLL pi=1 (bpd)", "pi_perturbation_eval.bpd.1.0"),
    Column("degradation pi 0->1 (bpd)", "pi_perturbation_eval.degradation"),
    Column("degradation, interior pixels only (bpd)", "pi_perturbation_eval.interior.degradation"),
    Column("train/test gap (bpd)", "train_test_gap_eval.gap_bpd"),
    *_QUALITY_COLUMNS,
)


def _ncml(label: str, gin: str, nll: tuple[float, float, float], fid: float) -> Row:
    names = [c.name for c in _NCML_COLUMNS]
    values = (*nll, round(nll[2] - nll[0], 2), None, fid)
    return Row(label, (gin,), paper=tuple((n, v) for n, v in zip(names, values) if v is not None))


NCML_TABLE1 = Table(
    name="ncml_table1",
    title="NCML Table 1: robustness of the likelihood to pi-perturbations (CIFAR-10 in the paper)",
    source="NCML (NeurIPS 2022 score workshop), Table 1; docs/methods.md",
    columns=_NCML_COLUMNS,
    rows=(
        _ncml("PixelCNN++ (MLE)", "pixelcnnpp_mle.gin", (2.92, 3.84, 4.01), 55.72),
        _ncml("NCPN (NCML-VE)", "ncml_ve.gin", (2.90, 3.77, 3.98), 32.71),
        _ncml("NCPN (NCML-subVP)", "ncml_subvp.gin", (2.95, 3.69, 3.94), 23.42),
        _ncml("NCPN (NCML-VP)", "ncml_vp.gin", (3.42, 3.65, 3.91), 13.50),
        Row("PixelCNN++ (MLE, noise-augmented control)", ("pixelcnnpp_mle_noise_aug.gin",)),
    ),
    notes=(
        "FD: our column is Inception FID only when sample_fd_eval.inception_weights is set; otherwise "
        "it is the Frechet distance in the library's domain classifier's features (results.json "
        "names the metric) and is not comparable with the paper's CIFAR-10 Inception FIDs (NCML-VP: "
        "13.50, 12.09 in a later version). Samples: ancestral (PixelCNN++), hybrid (NCML rows). "
        "The paper's finding: NCML models degrade less from pi = 0 to pi = 1 than PixelCNN++. "
        "'interior pixels only' repeats the test perturbing only pixels with levels 1..K-2 (MNIST's "
        "background at level 0 otherwise dominates). The noise-augmented control row (not in the paper) "
        "is PixelCNN++ trained by MLE on levels with NCML-VP-sized noise: it separates NCML from any "
        "smoothing.",
        _GAP_NOTE,
        _CODEC_NOTE,
    ),
    codec_reference=CodecReference("NLL pi=0 (bpd)", "pi_perturbation_eval.num_examples"),
)

_SF_COLUMNS = (
    Column("bound (bpd)", "score_likelihood_eval.bound_bpd.mean"),
    Column("bound s.e.", "score_likelihood_eval.bound_bpd.se"),
    Column("ODE NLL (bpd)", "score_likelihood_eval.ode_bpd.mean"),
    Column("ODE s.e.", "score_likelihood_eval.ode_bpd.se"),
    Column("ODE NFE", "score_likelihood_eval.ode_nfe_mean"),
    Column("ODE dequant bound, 1 sample (bpd)", "multisample_dequant_eval.bpd.1.mean"),
    Column("16 samples (bpd)", "multisample_dequant_eval.bpd.16.mean"),
    Column("128 samples (bpd)", "multisample_dequant_eval.bpd.128.mean"),
    Column("train/test gap, bound (bpd)", "train_test_gap_eval.gap_bpd"),
    Column("bound - ODE (bpd)", "score_likelihood_eval.bound_minus_ode_bpd.mean"),
    Column("bound - ODE s.e.", "score_likelihood_eval.bound_minus_ode_bpd.se"),
    Column("vardeq bound (bpd)", "vardeq_likelihood_eval.vardeq_bound_bpd.mean"),
    Column("vardeq ODE NLL (bpd)", "vardeq_likelihood_eval.vardeq_ode_bpd.mean"),
    Column("loss var, t ~ U", "dsm_loss_variance_eval.var_uniform"),
    Column("loss var, t ~ q (IS)", "dsm_loss_variance_eval.var_is"),
)

SCOREFLOW_TABLE2 = Table(
    name="scoreflow_table2",
    title="ScoreFlow Table 2: bound and ODE likelihood by SDE and weighting",
    source="ScoreFlow (Song et al., NeurIPS 2021), Table 2 (its numbers are lost from the extract) and Table 3",
    columns=_SF_COLUMNS,
    rows=tuple(
        Row(f"{sde} {weighting}", (f"scoreflow_{sde.lower()}_{weighting.replace(' + ', '_').replace('-', '_')}.gin",))
        for sde in ("VP", "subVP")
        for weighting in ("original", "likelihood", "likelihood_is")
    ) + (
        Row("VP likelihood_is + vardeq", ("scoreflow_vp_likelihood_is_vardeq.gin",),
            paper=(("vardeq ODE NLL (bpd)", 2.83),)),
    ),
    notes=(
        "Relations ScoreFlow (Song et al., 2021b) reports on CIFAR-10 and ImageNet 32: with only the weighting changed, a "
        "lower bound goes with a lower ODE NLL; likelihood weighting + importance sampling improves "
        "both; NLL_ODE <= bound. 2.83 bpd is the Table 3 ScoreFlow (variational dequantization, no "
        "flipping). 95% intervals are +-1.96 s.e. over test examples; bound - ODE is the mean of the per-example "
        "differences (paired), which tests NLL_ODE <= bound. Loss variance: the per-example "
        "likelihood-weighted DSM loss on test examples for the row's trained model, with t ~ U[eps, T] and "
        "with importance-sampled t (ScoreFlow (Song et al., 2021b): 98.48 -> 0.068 on CIFAR-10). The bound uses the eps correction, the ODE does not (as the paper).",
        "Multi-sample dequantization (multisample_dequant_eval): -log2 of (1/S) sum_s p(k + u_s), u_s uniform, with "
        "the ODE likelihood, on the first few test images (the number is in results.json); S = 1 is the plain "
        "bound. The ODE's one-probe Hutchinson divergence is a noisy log-density, and noise raises a "
        "log-mean-exp, so S > 1 can fall below the true NLL by up to half the probe's variance in nats.",
        _GAP_NOTE,
        _CODEC_NOTE,
    ),
    codec_reference=CodecReference("ODE NLL (bpd)", "score_likelihood_eval.num_examples"),
)

ARCSM_TABLE = Table(
    name="arcsm",
    title="AR-CSM: samples, denoising and anomaly detection against MLE baselines",
    source="AR-CSM (Meng et al., NeurIPS 2020); the extract has no numbers for these experiments",
    columns=(
        Column("FD of samples (see metric)", "sample_fd_eval.fd"),
        Column("FD floor (real)", "sample_fd_eval.floor.fd"),
        Column("KID of samples (see metric)", "sample_fd_eval.kid.kid"),
        Column("KID floor (real)", "sample_fd_eval.floor.kid.kid"),
        Column("PSNR noisy (dB)", "denoise_eval.psnr_noisy"),
        Column("PSNR denoised (dB)", "denoise_eval.psnr_denoised"),
        Column("AUROC noise", ("score_norm_anomaly_eval.auroc_uniform_noise",
                               "density_anomaly_eval.auroc_uniform_noise")),
        Column("AUROC inverted", ("score_norm_anomaly_eval.auroc_inverted", "density_anomaly_eval.auroc_inverted")),
        Column("AUROC flipped", ("score_norm_anomaly_eval.auroc_flipped", "density_anomaly_eval.auroc_flipped")),
        Column("test NLL (bpd)", "pi_perturbation_eval.bpd.0.0"),
        Column("train/test gap (bpd)", "train_test_gap_eval.gap_bpd"),
    ),
    rows=(
        Row("AR-CSM MADE", ("arcsm_made_mnist.gin",)),
        Row("AR-CSM MADE sigma 0.6", ("arcsm_made_mnist.gin",), bindings=("SIGMA = 0.6",)),
        Row("AR-CSM PixelCNN++", ("arcsm_pixelcnnpp_mnist.gin",)),
        Row("MADE MLE Gaussian", ("made_mle_gaussian_mnist.gin",)),
        Row("MADE MLE logistic mixture", ("made_mle_logistic_mnist.gin",)),
    ),
    notes=(
        "AR-CSM rows train on data + N(0, SIGMA^2) noise (SIGMA = 0.1; 0.6 is AR-CSM's MNIST "
        "denoising level, in the [-1, 1] model space). Denoising: single step xhat = y + sigma^2 s(y) "
        "(an approximation to Tweedie's formula, AR-CSM rows only). Anomaly score: ||s(x)||_2 for the "
        "AR-CSM rows, -log P(k) in bits/dim for the MLE rows (higher = more anomalous), on the same "
        "test images and OOD sets. FD: samples (per-dimension Langevin for AR-CSM, ancestral for MLE) "
        "against the test split in the library's domain-classifier features. Test NLL: the MLE "
        "baselines' discrete likelihood (score models have none). No dequantization bounds: the MLE MADEs are "
        "discrete models (each conditional reads the preceding bin centres), so their continuous density at "
        "dequantized points conditions on values never seen in training and bounds a different model.",
        _GAP_NOTE,
        _CODEC_NOTE,
    ),
    codec_reference=CodecReference("test NLL (bpd)", "pi_perturbation_eval.num_examples"),
)

GPS_TABLE = Table(
    name="gps",
    title="Walk-jump sampling: chain mixing against friction, and condition numbers",
    source="GPS / M-densities (Saremi et al., 2023); paper FID 14.15 on CIFAR-10 with one noise level",
    columns=(
        Column("classes visited per chain", "walk_jump_class_eval.mean_classes_visited"),
        Column("class switches per chain", "walk_jump_class_eval.mean_switches"),
    ),
    rows=tuple(
        Row(f"friction {f}", ("walkjump_mnist.gin",), bindings=(f"FRICTION = {f}",))
        for f in (0.25, 0.5, 1.0, 2.0)
    ),
    notes=(
        "friction is the effective gamma * delta of the A-B-O-B-A walk (delta = sigma / 2). "
        "Classes are counted with the library's domain classifier (not Inception).",
    ),
)

_DENSITY_EVALUATORS = "experiment.evaluators = [@pi_perturbation_eval, @score_likelihood_eval, @consistency_eval, @sample_fd_eval]"
_NCML_CLOSURE = ("score_likelihood_eval.ode_terminal = 'model'", "score_likelihood_eval.bound_terminal = 'model'")
"""NCML trains its density only up to T_ncml: the ODE and the DSM bound run to T_ncml and are closed by the
model's own density there."""

CROSS_METHOD_TABLE = Table(
    name="cross_method",
    title="One backbone family under every objective: likelihoods, score/likelihood consistency, samples",
    source="hybrids (no paper has this table): NCML, ScoreFlow and AR-CSM objectives on PixelCNN++/NCPN, with a U-Net DSM reference",
    columns=(
        Column("exact NLL (bpd)", "pi_perturbation_eval.bpd.0.0"),
        Column("degradation pi 0->1 (bpd)", "pi_perturbation_eval.degradation"),
        Column("ODE NLL (bpd)", "score_likelihood_eval.ode_bpd.mean"),
        Column("DSM bound (bpd)", "score_likelihood_eval.bound_bpd.mean"),
        Column("consistency gap (bpd)", "consistency_eval.gap_bpd.mean"),
        Column("|consistency gap| (bpd)", "consistency_eval.abs_gap_bpd.mean"),
        *_QUALITY_COLUMNS,
    ),
    rows=(
        Row("PixelCNN++ (MLE)", ("pixelcnnpp_mle.gin",)),
        Row("NCPN (NCML-VE)", ("ncml_ve.gin",), bindings=(_DENSITY_EVALUATORS, *_NCML_CLOSURE)),
        Row("NCPN (NCML-VP)", ("ncml_vp.gin",), bindings=(_DENSITY_EVALUATORS, *_NCML_CLOSURE)),
        Row("NCPN (NCML-subVP)", ("ncml_subvp.gin",), bindings=(_DENSITY_EVALUATORS, *_NCML_CLOSURE)),
        Row("NCPN (DSM, likelihood + IS, VP)", ("ncpn_dsm_vp.gin",), bindings=(_DENSITY_EVALUATORS,)),
        Row("PixelCNN++ AR-CSM (CSM)", ("arcsm_pixelcnnpp_mnist.gin",),
            bindings=("experiment.evaluators = [@sample_fd_eval]",)),
        Row("U-Net (DSM, likelihood + IS, VP; score-model reference)", ("scoreflow_vp_likelihood_is.gin",),
            bindings=("experiment.evaluators = [@score_likelihood_eval, @sample_fd_eval]",
                      "sample_fd_eval.sampler = @pc_sampler")),
    ),
    notes=(
        "Exact NLL: discrete bits/dim at t = 0 (density models). ODE NLL and DSM bound: of every model "
        "with a score over t in [1e-5, 1] (for NCPN the autograd score of its density). An NCML model is "
        "trained only up to T_ncml, so its score above that is untrained (its ODE to T with the prior "
        "went NaN on MNIST): its ODE NLL and DSM bound run from 1e-5 to T_ncml and are closed by its own "
        "density there (score_likelihood_eval.ode_terminal = bound_terminal = 'model'; the bound is then "
        "that of the continuous-time version of its hybrid sampler: an ancestral draw at T_ncml, then the "
        "reverse SDE). "
        "Consistency gap: the model's "
        "own -log p(x | t0) against the ODE from t0 = 1e-3 to t1 = T_ncml driven by its own score and "
        "closed by its own density at t1 (0 for a model whose noise levels form one diffusion; "
        "consistency_eval). Samples for FD/KID: ancestral (PixelCNN++), hybrid (NCPN rows), "
        "per-dimension Langevin (AR-CSM), predictor-corrector (U-Net), against the test split in the "
        "library's domain-classifier features, with the same metrics for as many held-out real images "
        "(the floor).",
    ),
)

_CSM_ROW = ("MODEL = @MADEConditionalScore()", "OBJECTIVE = @CSM()", "SAMPLER = @ar_langevin_sampler",
            'objective_eval.reduction = "mean"')
_SAME_LANGEVIN = ("ar_langevin_sampler.num_steps = %LANGEVIN_STEPS",)
"""After the presets (which bind ar_langevin_sampler.num_steps): both samplers take the row file's steps."""


def _objective_rows(data: str, gin_file: str) -> tuple[Row, ...]:
    """The same MADE under CSM (AR-CSM reading) and SM, SSM, SSM-VR, DSM (joint reading) on ``gin_file``."""
    return (
        Row(f"{data} CSM (AR-CSM MADE)", (gin_file,), bindings=(*_CSM_ROW, *_SAME_LANGEVIN)),
        Row(f"{data} SM (joint MADE)", (gin_file,), bindings=("OBJECTIVE = @SM()", *_SAME_LANGEVIN)),
        Row(f"{data} SSM (joint MADE)", (gin_file,), bindings=("OBJECTIVE = @SSM()", *_SAME_LANGEVIN)),
        Row(f"{data} SSM-VR (joint MADE)", (gin_file,),
            bindings=("OBJECTIVE = @SSM()", "SSM.variance_reduction = True", *_SAME_LANGEVIN)),
        Row(f"{data} DSM (joint MADE)", (gin_file,), bindings=_SAME_LANGEVIN),
    )


_OBJECTIVE_ROWS = (*_objective_rows("MNIST", "made_objectives_mnist.gin"),
                   *_objective_rows("toy", "made_objectives_toy.gin"))

ARCSM_OBJECTIVES_TABLE = Table(
    name="arcsm_objectives",
    title="One MADE under CSM, SM, SSM, SSM-VR and DSM: loss, its spread, cost per update, samples",
    source="AR-CSM (Meng et al., NeurIPS 2020) compares CSM with SM, SSM and DSM; the extract has no numbers",
    columns=(
        Column("loss per example (end of training)", "objective_eval.loss_per_example.mean"),
        Column("its sd over updates", "objective_eval.loss_per_example.sd"),
        Column("s / update", "objective_eval.seconds_per_update"),
        *_QUALITY_COLUMNS,
        Column("MMD^2 (toy)", "sample_mmd_eval.mmd2"),
        Column("MMD^2 floor (real)", "sample_mmd_eval.floor.mmd2"),
    ),
    rows=_OBJECTIVE_ROWS,
    notes=(
        "Only the objective changes between the rows of a dataset: the CSM row reads the MADE as an "
        "autoregressive conditional score model; the others read the same network with its masks removed as "
        "the joint score (MADEJointScore, same sizes and the same initial weights for a seed). Every objective "
        "sees the data + N(0, SIGMA^2) (SIGMA = 0.1; toy: checkerboard). Loss: objective_eval, the training loss "
        "at the final weights on test batches of the training batch size with fresh noise (and projections), per "
        "example (summed over the D dimensions; per dimension in results.json); 'its sd over updates' is its "
        "standard deviation over 50 batches, the spread of an update-by-update loss curve at the end of "
        "training (the objectives estimate different constants, so "
        "compare spreads, not levels; SM, SSM and SSM-VR estimate the same quantity on the same model). "
        "s / update: forward, backward and Adam step at the training batch size, median of 5 (the one-thread "
        "scaling with D is benchmarks/score_objectives.py, docs/benchmarks.md). Samples: per-dimension Langevin "
        "for CSM, Langevin on all coordinates for the joint models (one noise level, so no annealing), the "
        "same step and updates per coordinate; FD/KID against the clean test split with the real-data floor "
        "(images), MMD^2 with Gaussian kernels against 2000 test points with the floor of as many real points "
        "as samples (toy). SM costs D backward passes per update: its MNIST row refuses D = 784 (SM.max_dims = 256), so at "
        "--scale=small run the table with --rows="
        + ",".join(r.slug for r in _OBJECTIVE_ROWS if r.label != "MNIST SM (joint MADE)")
        + " (SM then reads 'not selected'). Loss curves of every row, mean +- sd over --seeds trainings: "
        "python -m experiments.loss_bands --table=arcsm_objectives --workdir=DIR.",
    ),
)

ARCSM_VAE_TABLE = Table(
    name="arcsm_vae",
    title="VAEs with implicit encoders: entropy gradients from AR-CSM and SSM score estimates, against a Gaussian encoder",
    source="AR-CSM (Meng et al., NeurIPS 2020), Table 2 (MNIST), after Song et al. (Sliced Score Matching, UAI 2019); "
           "the extract has none of its numbers",
    columns=(
        Column("NLL (nats)", "vae_likelihood_eval.nll_nats.mean"),
        Column("NLL s.e.", "vae_likelihood_eval.nll_nats.se"),
        Column("NLL at K/10 (nats)", "vae_likelihood_eval.nll_nats_k10.mean"),
        Column("K/10 - K (nats)", "vae_likelihood_eval.k10_minus_k_nats.mean"),
        Column("NLL (bits/dim)", "vae_likelihood_eval.nll_bpd.mean"),
        Column("ESS / K", "vae_likelihood_eval.ess_fraction"),
        *_QUALITY_COLUMNS,
    ),
    rows=tuple(
        Row(f"{label}, latent {dim}", (gin,), bindings=(f"LATENT_DIM = {dim}",))
        for dim in (8, 16)
        for label, gin in (("Gaussian encoder (ELBO)", "vae_gaussian_mnist.gin"),
                           ("implicit encoder + SSM", "vae_implicit_ssm_mnist.gin"),
                           ("implicit encoder + AR-CSM", "vae_implicit_csm_mnist.gin"))
    ),
    notes=(
        "MNIST binarised stochastically (b ~ Bernoulli(k / 255), test images once, seeded); Bernoulli "
        "decoder, prior N(0, I); NLL = -log p(x) in nats per image, bits/dim = nats / (784 ln 2) of these "
        "binary images (not comparable with the 256-level tables). Estimator: importance sampling, "
        "log (1/K) sum_k p(x | z_k) p(z_k) / r(z_k | x) with K = 1000 draws from an equal mixture of the "
        "encoder's Gaussian (q itself, or a Gaussian fitted to 128 implicit-encoder draws, scale x 1.5) and "
        "the Laplace approximation of the posterior (scale x 1.5): unbiased for p(x), so an upper bound on "
        "the NLL in expectation; 'K/10 - K' (same draws) near 0 shows it has converged, and s.e. is over "
        "test images (Song et al.'s code evaluates with AIS). Implicit rows: z = g(x, eps), entropy gradient from the "
        "estimator's score of q(z | x) (refitted once per VAE update on fresh draws, in coordinates "
        "whitened by the mean and covariance of 256 draws per image, a choice of hybrids); the AR-CSM "
        "estimator's joint score normalises its one-dimensional conditionals by quadrature. FD/KID: decoder means of z ~ N(0, I) "
        "against the test split in the library's domain-classifier features, with the real-data floor.",
    ),
)

TABLES = {t.name: t for t in (NCML_TABLE1, SCOREFLOW_TABLE2, ARCSM_TABLE, GPS_TABLE, CROSS_METHOD_TABLE,
                              ARCSM_OBJECTIVES_TABLE, ARCSM_VAE_TABLE)}
