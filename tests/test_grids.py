import math

import pytest
import torch

from fewstep.grids import make_grid, make_schedule
from fewstep.processes import EDM, VPDiscrete, VPLinear


@pytest.mark.parametrize("kind", ["uniform", "logsnr", "quadratic", "karras"])
@pytest.mark.parametrize("process", [VPDiscrete.linear(), VPLinear(), EDM()], ids=lambda p: type(p).__name__)
def test_grids_start_at_t_max_and_decrease(kind, process):
    ts = make_grid(process, 7, kind)
    assert len(ts) == 8 and ts[0] == process.t_max and ts[-1] == process.t_min
    assert bool((ts[1:] < ts[:-1]).all())


def test_logsnr_grid_is_uniform_in_lambda():
    p = VPDiscrete.linear()
    lam = p.lam(make_grid(p, 10, "logsnr"))
    assert torch.allclose(lam.diff(), lam.diff()[0].expand(10), rtol=1e-8)


def test_karras_grid_matches_edm_formula():
    p = EDM(0.002, 80.0)
    ts = make_grid(p, 5, "karras", rho=7.0)
    i = torch.arange(6, dtype=torch.float64)
    want = (80 ** (1 / 7) + i / 5 * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7
    assert torch.allclose(ts, want, rtol=1e-10)


def test_quadratic_grid():
    p = VPLinear()
    ts = make_grid(p, 4, "quadratic")
    u = torch.linspace(0, 1, 5, dtype=torch.float64)
    assert torch.allclose(ts, p.t_min + (p.t_max - p.t_min) * (1 - u) ** 2)


def test_clean_end_schedule():
    s = make_schedule(VPDiscrete.linear(), 4, "uniform", clean_end=True)
    assert s.sigma[-1] == 0 and s.alpha[-1] == 1 and math.isinf(s.lam[-1]) and s.lands_clean(3)
    assert not make_schedule(VPDiscrete.linear(), 4, "uniform", clean_end=False).lands_clean(3)


def test_grid_errors():
    p = VPDiscrete.linear()
    with pytest.raises(ValueError, match="valid grids: uniform, logsnr, quadratic, karras"):
        make_grid(p, 5, "cosine")
    with pytest.raises(ValueError, match="strictly decreasing"):
        make_grid(p, 2, [10.0, 500.0, 0.0])
    with pytest.raises(ValueError, match="outside"):
        make_grid(p, 1, [2000.0, 0.0])
    with pytest.raises(ValueError, match="pass 4 times"):
        make_schedule(p, 3, [999.0, 0.0])
