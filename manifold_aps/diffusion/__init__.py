"""The diffusion prior: VPSDE, noise networks, training, samplers, ELBO and likelihood."""

from manifold_aps.diffusion.elbo import ImportanceTimeSampler, elbo_prior_term
from manifold_aps.diffusion.gaussian import GaussianNoisePredictor, exact_gaussian_prior
from manifold_aps.diffusion.likelihood import bits_per_dim, elbo_bound, elbo_constant, ode_log_likelihood
from manifold_aps.diffusion.mesh_networks import DiffusionNet
from manifold_aps.diffusion.networks import ResidualMLP, SpectralMLP, UNet1D, build_network
from manifold_aps.diffusion.residual import GaussianResidualNetwork
from manifold_aps.diffusion.prior import DiffusionPrior
from manifold_aps.diffusion.sampling import (SampleResult, sample_ancestral, sample_euler_maruyama, sample_ode,
                                             sample_ode_adaptive, time_grid)
from manifold_aps.diffusion.saving import load_prior, save_prior
from manifold_aps.diffusion.sde import VPSDE
from manifold_aps.diffusion.training import (denoising_score_matching_loss, gaussian_residual_prior, prior_training_config,
                                             train_prior)

__all__ = [
    "VPSDE",
    "DiffusionPrior",
    "GaussianNoisePredictor",
    "exact_gaussian_prior",
    "ImportanceTimeSampler",
    "elbo_prior_term",
    "UNet1D",
    "ResidualMLP",
    "SpectralMLP",
    "DiffusionNet",
    "GaussianResidualNetwork",
    "gaussian_residual_prior",
    "build_network",
    "denoising_score_matching_loss",
    "prior_training_config",
    "train_prior",
    "save_prior",
    "load_prior",
    "SampleResult",
    "time_grid",
    "sample_euler_maruyama",
    "sample_ancestral",
    "sample_ode",
    "sample_ode_adaptive",
    "elbo_constant",
    "elbo_bound",
    "ode_log_likelihood",
    "bits_per_dim",
]
