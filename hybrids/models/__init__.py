"""Models: the NoiseConditionalModel contract and the networks that implement it."""
from hybrids.models.analytic import GaussianDataModel
from hybrids.models.base import NoiseConditionalModel

__all__ = ["GaussianDataModel", "NoiseConditionalModel"]
