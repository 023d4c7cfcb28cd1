"""Likelihood tools: units (bits/dim); probability-flow ODE, DSM bound and dequantization
are added by the ScoreFlow modules of this package."""
from hybrids.likelihood.units import bits_per_dim, nats_to_bpd

__all__ = ["bits_per_dim", "nats_to_bpd"]
from hybrids.likelihood.bound import dsm_bound, eps_correction_sample
from hybrids.likelihood.dequantize import (VariationalDequantizer, dequantization_log_prob,
                                           dequantization_log_weights, multisample_bounds,
                                           train_variational_dequantizer)
from hybrids.likelihood.ode import ODELikelihood, ode_log_prob

__all__ += ["ODELikelihood", "VariationalDequantizer", "dequantization_log_prob", "dequantization_log_weights",
            "dsm_bound", "eps_correction_sample", "multisample_bounds", "ode_log_prob",
            "train_variational_dequantizer"]
