from hybrids.samplers.walk_jump import walk_jump
from hybrids.samplers.ode import ODESample, ode_sample  # noqa: E402
from hybrids.samplers.langevin import ar_langevin_sample, langevin_sample  # noqa: E402
from hybrids.samplers.sde import pc_sample, sample_from_prior  # noqa: E402
from hybrids.samplers.autoregressive import ancestral_sample  # noqa: E402
