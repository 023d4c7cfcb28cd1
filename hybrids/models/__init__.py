"""Models: the NoiseConditionalModel contract and the networks that implement it."""
from hybrids.models.analytic import GaussianDataModel
from hybrids.models.base import NoiseConditionalModel

__all__ = ["GaussianDataModel", "NoiseConditionalModel"]
from hybrids.models.gps import GPSModel  # noqa: E402

__all__ += ["GPSModel"]
from hybrids.models.mlp import TimeMLP  # noqa: E402
from hybrids.models.score_model import ScoreModel  # noqa: E402
from hybrids.models.unet import UNet  # noqa: E402

__all__ += ["ScoreModel", "TimeMLP", "UNet"]
from hybrids.models.heads import PixelCNNConditionalScore  # noqa: E402
from hybrids.models.made import MADE, MADEConditionalScore, MADEDensity  # noqa: E402

__all__ += ["MADE", "MADEConditionalScore", "MADEDensity", "PixelCNNConditionalScore"]
from hybrids.models.pixelcnnpp import NCPN, PixelCNNpp  # noqa: E402

__all__ += ["NCPN", "PixelCNNpp"]
