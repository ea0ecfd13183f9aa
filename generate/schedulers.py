"""Samplers for EDM-parameterised video diffusion models (SVD, SV3D and ours), in the diffusers manner.

A scheduler holds the noise levels of one sampling run and advances a sample between them; the pipeline's loop calls
``set_timesteps``, ``scale_model_input`` and ``step`` and stays readable. Both schedulers work in the sigma space of
Karras et al. (EDM): ``x_sigma = x_0 + sigma * noise``, ``sigma`` from ``sigma_max`` down to 0. The model is given
``c_in(sigma) * x`` and ``c_noise(sigma)`` and returns a raw output turned into a denoised estimate by the
``Denoiser`` (v-prediction with EDM's c_noise, as SVD and SV3D: sgm's ``VScalingWithEDMcNoise``).

- ``EulerEDMScheduler``: EDM's Euler sampler on Karras sigmas (rho 7), optional churn (sgm's ``EulerEDMSampler``).
  SV3D samples with sigma_max 700, sigma_min 0.002.
- ``DDIMScheduler``: DDIM (Song et al. 2021) on the same model, its timesteps evenly spaced over a 1000-step
  variance-preserving training schedule (scaled-linear betas, as SD/SVD) and mapped to sigmas; ``eta`` in [0, 1]
  interpolates deterministic DDIM (0) and ancestral sampling (1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Denoiser:
    """EDM preconditioning of a v-prediction network: ``D(x, sigma) = c_skip x + c_out F(c_in x, c_noise)``."""

    sigma_data: float = 1.0

    def c_in(self, sigma: Tensor) -> Tensor:
        return 1.0 / (sigma**2 + self.sigma_data**2).sqrt()

    def c_noise(self, sigma: Tensor) -> Tensor:
        return 0.25 * sigma.log()

    def denoised(self, model_output: Tensor, sample: Tensor, sigma: Tensor) -> Tensor:
        """The estimate of x_0 from the network's raw (v) output at noise level ``sigma``."""
        c_skip = self.sigma_data**2 / (sigma**2 + self.sigma_data**2)
        c_out = -sigma * self.sigma_data / (sigma**2 + self.sigma_data**2).sqrt()
        return c_skip * sample + c_out * model_output

    def target(self, clean: Tensor, noise: Tensor, sigma: Tensor) -> Tensor:
        """What the network should output for ``clean + sigma * noise`` (training): the v of that pair."""
        c_skip = self.sigma_data**2 / (sigma**2 + self.sigma_data**2)
        c_out = -sigma * self.sigma_data / (sigma**2 + self.sigma_data**2).sqrt()
        return (clean - c_skip * (clean + sigma * noise)) / c_out


def karras_sigmas(num_steps: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> Tensor:
    """[num_steps + 1] EDM's noise levels from ``sigma_max`` to ``sigma_min``, then 0."""
    ramp = torch.linspace(0, 1, num_steps, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sigmas = (hi + ramp * (lo - hi)) ** rho
    return torch.cat([sigmas, sigmas.new_zeros(1)])


class EulerEDMScheduler:
    """EDM's Euler sampler (first order), with sgm's optional churn; see the module docstring."""

    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 700.0, rho: float = 7.0, s_churn: float = 0.0,
                 s_tmin: float = 0.0, s_tmax: float = math.inf, s_noise: float = 1.0) -> None:  # fmt: skip
        self.sigma_min, self.sigma_max, self.rho = sigma_min, sigma_max, rho
        self.s_churn, self.s_tmin, self.s_tmax, self.s_noise = s_churn, s_tmin, s_tmax, s_noise
        self.sigmas = karras_sigmas(1, sigma_min, sigma_max, rho)

    def set_timesteps(self, num_steps: int) -> Tensor:
        """Prepare ``num_steps`` steps; returns the [num_steps] sigmas the model will be called at."""
        if num_steps < 1:
            raise ValueError(f"num_steps must be at least 1, got {num_steps}")
        self.sigmas = karras_sigmas(num_steps, self.sigma_min, self.sigma_max, self.rho)
        return self.sigmas[:-1]

    @property
    def init_noise_sigma(self) -> float:
        """Scale of the Gaussian noise the first sample is drawn with (x_T = init_noise_sigma * N(0, I))."""
        return float(self.sigmas[0])

    def step(self, denoise, sample: Tensor, index: int, generator: torch.Generator | None = None) -> Tensor:
        """``sample`` at ``sigmas[index]`` to ``sigmas[index + 1]``; ``denoise(x, sigma) -> x_0 estimate``."""
        sigma, sigma_next = float(self.sigmas[index]), float(self.sigmas[index + 1])
        gamma = 0.0
        if self.s_churn > 0 and self.s_tmin <= sigma <= self.s_tmax:
            gamma = min(self.s_churn / (len(self.sigmas) - 1), math.sqrt(2.0) - 1.0)
        sigma_hat = sigma * (1.0 + gamma)
        if gamma > 0:
            noise = torch.randn(sample.shape, generator=generator, dtype=sample.dtype).to(sample.device)
            sample = sample + noise * self.s_noise * math.sqrt(sigma_hat**2 - sigma**2)
        derivative = (sample - denoise(sample, sigma_hat)) / sigma_hat
        return sample + derivative * (sigma_next - sigma_hat)


class DDIMScheduler:
    """DDIM in sigma space on a VP training schedule; see the module docstring."""

    def __init__(self, num_train_timesteps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012,
                 eta: float = 0.0) -> None:  # fmt: skip
        if not 0.0 <= eta <= 1.0:
            raise ValueError(f"eta must lie in [0, 1], got {eta}")
        betas = torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=torch.float64) ** 2
        alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        self.train_sigmas = ((1 - alphas_cumprod) / alphas_cumprod).sqrt()  # sigma of each training timestep
        self.eta = eta
        self.sigmas = torch.cat([self.train_sigmas[-1:], self.train_sigmas.new_zeros(1)])

    def set_timesteps(self, num_steps: int) -> Tensor:
        """``num_steps`` timesteps evenly spaced over training ("trailing", so the first is the noisiest)."""
        if num_steps < 1:
            raise ValueError(f"num_steps must be at least 1, got {num_steps}")
        total = len(self.train_sigmas)
        timesteps = torch.round(torch.arange(total, 0, -total / num_steps)).long() - 1
        self.sigmas = torch.cat([self.train_sigmas[timesteps], self.train_sigmas.new_zeros(1)])
        return self.sigmas[:-1]

    @property
    def init_noise_sigma(self) -> float:
        return float(self.sigmas[0])

    def step(self, denoise, sample: Tensor, index: int, generator: torch.Generator | None = None) -> Tensor:
        """DDIM's update from ``sigmas[index]`` to ``sigmas[index + 1]`` (written for x = x_0 + sigma * eps)."""
        sigma, sigma_next = float(self.sigmas[index]), float(self.sigmas[index + 1])
        x0 = denoise(sample, sigma)
        eps = (sample - x0) / sigma
        # DDIM's sigma_t(eta) converted from VP to sigma space: the ancestral part of the step.
        a, a_next = 1.0 / (1.0 + sigma**2), 1.0 / (1.0 + sigma_next**2)  # alpha-bar of both steps
        vp_std = self.eta * math.sqrt((1 - a_next) / (1 - a) * (1 - a / a_next))
        ancestral = vp_std / math.sqrt(a_next)
        direction = math.sqrt(max(sigma_next**2 - ancestral**2, 0.0))
        out = x0 + direction * eps
        if ancestral > 0:
            noise = torch.randn(sample.shape, generator=generator, dtype=sample.dtype).to(sample.device)
            out = out + ancestral * noise
        return out
