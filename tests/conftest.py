import pytest
import torch

import fewstep
from fewstep.exact import GaussianMixture
from fewstep.processes import VPDiscrete


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def gmm8() -> GaussianMixture:
    """A small 8-d low-rank mixture used across solver tests."""
    return GaussianMixture.random_low_rank(dim=8, components=3, rank=2, floor=0.05, seed=1)


@pytest.fixture(scope="session")
def ddpm_linear() -> VPDiscrete:
    return VPDiscrete.linear(1000, 1e-4, 0.02)


def seeded_noise(process, n: int, dim: int, seed: int = 0, dtype=torch.float64):
    return fewstep.prior_noise(process, (dim,), fewstep.generators(range(seed, seed + n)), dtype=dtype)
