"""Likelihood tools: units (bits/dim); probability-flow ODE, DSM bound and dequantization
are added by the ScoreFlow modules of this package."""
from hybrids.likelihood.units import bits_per_dim, discrete_bits_per_dim

__all__ = ["bits_per_dim", "discrete_bits_per_dim"]
