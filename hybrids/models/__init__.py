"""Models: the NoiseConditionalModel contract, its AR-CSM and ancestral-mixture side contracts
(``hybrids.models.base``) and the networks that implement them."""
from hybrids.models.analytic import GaussianDataModel
from hybrids.models.base import (
    AncestralMixtureModel,
    ARConditionalScoreModel,
    IncrementalCache,
    NoiseConditionalModel,
    PixelIncrementalCache,
)

__all__ = [
    "ARConditionalScoreModel",
    "AncestralMixtureModel",
    "GaussianDataModel",
    "IncrementalCache",
    "NoiseConditionalModel",
    "PixelIncrementalCache",
]
from hybrids.models.gps import GPSModel  # noqa: E402

__all__ += ["GPSModel"]
from hybrids.models.mlp import TimeMLP  # noqa: E402
from hybrids.models.score_model import ScoreModel  # noqa: E402
from hybrids.models.unet import UNet  # noqa: E402

__all__ += ["ScoreModel", "TimeMLP", "UNet"]
from hybrids.models.heads import PixelCNNConditionalScore  # noqa: E402
from hybrids.models.made import (  # noqa: E402
    MADE,
    GaussianConditional,
    LogisticMixtureConditional,
    MADEConditional,
    MADEConditionalScore,
    MADEDensity,
    MADEJointScore,
)

__all__ += ["GaussianConditional", "LogisticMixtureConditional", "MADE", "MADEConditional",
            "MADEConditionalScore", "MADEDensity", "MADEJointScore", "PixelCNNConditionalScore"]
from hybrids.models.pixelcnnpp import NCPN, PixelCNNpp  # noqa: E402

__all__ += ["NCPN", "PixelCNNpp"]
from hybrids.models.vae import VAE  # noqa: E402

__all__ += ["VAE"]
