"""The toolkit for writing objectives, samplers and hooks: one import for the shared helpers.

Every helper is defined once, in the layer it belongs to, and gathered here so that a new
objective or hook needs no private copies:

* models: :func:`model_dtype`, :func:`model_device`, :func:`sde_of` (a model's SDE, or the one
  bound in gin), :func:`as_score_fn` (a model or a callable -> ``score_fn(x, t)``);
* randomness (drawn on the generator's device, then moved): :func:`randn`, :func:`rand`,
  :func:`randn_like`, :func:`rand_like`;
* times: :func:`uniform_times` (t ~ U[eps, T]), :func:`importance_sample_t` (t ~ q(t) proportional
  to g^2 / sigma^2, with its weight), :func:`check_eps`, :func:`default_sampling_eps`;
* data: :func:`to_model_space` (levels -> dequantized [-1, 1]; floats unchanged),
  :func:`dequantize`, :func:`quantize` (model space -> levels), :func:`bin_centers` (middle of a
  dequantization bin), :func:`level_values` (the grid 2k/(K-1) - 1 of discretized mixtures),
  :func:`expand_as_batch` (``[B]`` -> ``[B, 1, ..., 1]``);
* units: :func:`nats_to_bpd` (the one nats -> bits/dim conversion), :func:`bits_per_dim` (with the
  dequantization offset);
* the perturbation path of objectives: :func:`model_space_data`, :func:`sample_times`,
  :func:`perturb`, :class:`Perturbation` (``hybrids.objectives.perturb``);
* statistics: :func:`mean_ci`;
* files: :func:`atomic_write`, :func:`atomic_write_text`, :func:`atomic_torch_save`.
"""
from hybrids.data.transforms import bin_centers, dequantize, level_values, quantize, to_model_space
from hybrids.io import atomic_torch_save, atomic_write, atomic_write_text
from hybrids.likelihood.units import bits_per_dim, nats_to_bpd
from hybrids.models.base import as_score_fn
from hybrids.objectives.perturb import Perturbation, model_space_data, perturb, sample_times
from hybrids.sdes import default_sampling_eps, sde_of
from hybrids.stats import mean_ci
from hybrids.tensors import expand_as_batch, model_device, model_dtype, rand, rand_like, randn, randn_like
from hybrids.time_sampling import check_eps, importance_sample_t, uniform_times

__all__ = [
    "Perturbation",
    "as_score_fn",
    "atomic_torch_save",
    "atomic_write",
    "atomic_write_text",
    "bin_centers",
    "bits_per_dim",
    "check_eps",
    "default_sampling_eps",
    "dequantize",
    "expand_as_batch",
    "importance_sample_t",
    "level_values",
    "mean_ci",
    "model_space_data",
    "model_device",
    "model_dtype",
    "nats_to_bpd",
    "perturb",
    "quantize",
    "rand",
    "rand_like",
    "randn",
    "randn_like",
    "sample_times",
    "sde_of",
    "to_model_space",
    "uniform_times",
]
