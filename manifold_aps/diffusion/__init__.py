"""The diffusion prior: VPSDE, noise networks, training, samplers, ELBO and likelihood."""

from manifold_aps.diffusion.elbo import ImportanceTimeSampler, elbo_prior_term
from manifold_aps.diffusion.gaussian import GaussianNoisePredictor
from manifold_aps.diffusion.prior import DiffusionPrior
from manifold_aps.diffusion.sde import VPSDE

__all__ = ["VPSDE", "DiffusionPrior", "GaussianNoisePredictor", "ImportanceTimeSampler", "elbo_prior_term"]
