"""Runner hooks: evaluators and samplers that ``experiments.run`` calls on a trained model.

Importing this package registers every hook with gin (module ``hybrids.hooks``); gin files start
with ``import hybrids.hooks``. The contract (signature, outputs, result keys, PNG names, the
:class:`Budget` of sizes) is in :mod:`hybrids.hooks.base`.

| module | hooks |
| --- | --- |
| ``likelihood`` | ``pi_perturbation_eval``, ``score_likelihood_eval``, ``consistency_eval``, ``dsm_loss_variance_eval``, ``vardeq_likelihood_eval``, ``density_grid_eval`` |
| ``likelihood_baselines`` | ``train_test_gap_eval``, ``multisample_dequant_eval`` |
| ``samplers`` | ``ancestral_sampler``, ``hybrid_sampler``, ``pc_sampler``, ``ode_sampler``, ``annealed_langevin_sampler``, ``ar_langevin_sampler``, ``model_sampler``, ``density_grid_image`` |
| ``sample_quality`` | ``sample_fd_eval`` |
| ``anomaly`` | ``score_norm_anomaly_eval``, ``density_anomaly_eval`` |
| ``denoising`` | ``denoise_eval``, ``denoise_images`` |
| ``walk_jump`` | ``walk_jump_sampler``, ``walk_jump_class_eval``, ``conditioning_eval`` |
| ``objective_comparison`` | ``objective_eval``, ``langevin_sampler``, ``sample_mmd_eval`` |
| ``vae`` | ``vae_likelihood_eval``, ``vae_sampler`` |
"""
from hybrids.hooks.anomaly import density_anomaly_eval, score_norm_anomaly_eval
from hybrids.hooks.base import (Budget, Hook, evaluator, hook_keys, sampler, samples_output, score_sampler_hook,
                                shape_sampler_hook)
from hybrids.hooks.denoising import denoise_eval, denoise_images
from hybrids.hooks.likelihood import (consistency_eval, density_grid_eval, dsm_loss_variance_eval, pi_perturbation_eval,
                                      score_likelihood_eval, vardeq_likelihood_eval)
from hybrids.hooks.likelihood_baselines import multisample_dequant_eval, train_test_gap_eval
from hybrids.hooks.sample_quality import sample_fd_eval
from hybrids.hooks.samplers import (ancestral_sampler, annealed_langevin_sampler, ar_langevin_sampler,
                                    density_grid_image, hybrid_sampler, model_sampler, ode_sampler, pc_sampler)
from hybrids.hooks.walk_jump import conditioning_eval, walk_jump_class_eval, walk_jump_sampler
from hybrids.hooks.objective_comparison import langevin_sampler, objective_eval, sample_mmd_eval
from hybrids.hooks.vae import vae_likelihood_eval, vae_sampler

__all__ = [
    "Budget", "Hook", "ancestral_sampler", "annealed_langevin_sampler", "ar_langevin_sampler", "conditioning_eval",
    "consistency_eval",
    "density_anomaly_eval", "density_grid_eval", "density_grid_image", "denoise_eval", "denoise_images",
    "dsm_loss_variance_eval", "evaluator", "hook_keys", "hybrid_sampler", "model_sampler", "multisample_dequant_eval",
    "ode_sampler",
    "pc_sampler", "pi_perturbation_eval", "sample_fd_eval", "sampler", "samples_output", "score_likelihood_eval",
    "score_norm_anomaly_eval", "score_sampler_hook", "shape_sampler_hook", "train_test_gap_eval",
    "vardeq_likelihood_eval",
    "walk_jump_class_eval", "walk_jump_sampler",
    "vae_likelihood_eval", "vae_sampler",
    "langevin_sampler", "objective_eval", "sample_mmd_eval",
]
