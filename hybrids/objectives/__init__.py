from hybrids.objectives.multimeasurement import MultimeasurementDenoising
from hybrids.objectives.dsm import DSM, importance_sample_t  # noqa: E402
from hybrids.objectives.csm import CSM  # noqa: E402
from hybrids.objectives.mle import MLE  # noqa: E402
from hybrids.objectives.ncml import NCML  # noqa: E402
from hybrids.objectives.score_matching import SM, SSM  # noqa: E402
from hybrids.objectives.vae import VAEObjective  # noqa: E402
