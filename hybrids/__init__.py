"""hybrids: generative models between likelihood models and score models.

One abstraction, :class:`hybrids.models.base.NoiseConditionalModel`, hosts NCML, AR-CSM,
ScoreFlow and multimeasurement walk-jump sampling; see README.md and docs/.
"""
__version__ = "0.1.0"
