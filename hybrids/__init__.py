"""hybrids: generative models between likelihood models and score models.

One abstraction, :class:`hybrids.models.base.NoiseConditionalModel`, hosts NCML, AR-CSM,
ScoreFlow and multimeasurement walk-jump sampling; see README.md and docs/.

``hybrids.load_run(workdir)`` rebuilds a trained run's model from its workdir
(:mod:`hybrids.runs`); it and ``hybrids.Run`` are imported on first use, so ``import hybrids``
stays cheap.
"""
__version__ = "0.1.0"

__all__ = ["Run", "load_run"]


def __getattr__(name: str):
    if name in ("Run", "load_run"):
        from hybrids import runs

        return getattr(runs, name)
    raise AttributeError(f"module 'hybrids' has no attribute {name!r}")
