"""``fewstep.compile_denoiser``: the same outputs as eager execution, clear errors."""

import pytest
import torch

import fewstep
from fewstep.compiling import CompiledNetwork, CompileError
from fewstep.processes import VPDiscrete


class SmallNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(1, 4, 3, padding=1)
        self.out = torch.nn.Conv2d(4, 1, 3, padding=1)

    def forward(self, x, t):
        return self.out(torch.nn.functional.silu(self.conv(x)) * (1 + t[:, None, None, None] / 1000))


def test_compiled_denoiser_matches_eager():
    den = fewstep.Denoiser(SmallNet(), VPDiscrete.linear(), "v")
    wrapped = fewstep.DynamicThresholding(den, 0.99)
    seeds = [3, 4, 5]
    with torch.no_grad():
        eager = fewstep.generate(wrapped, (1, 8, 8), seeds, "dpm++2m", 4)
        assert fewstep.compile_denoiser(wrapped) is wrapped
        assert isinstance(den.net, CompiledNetwork)
        fewstep.compile_denoiser(wrapped)  # twice: no-op
        assert not isinstance(den.net.eager, CompiledNetwork)
        try:
            compiled = fewstep.generate(wrapped, (1, 8, 8), seeds, "dpm++2m", 4)
        except CompileError as err:  # e.g. no C++ compiler on this machine: the error says so
            pytest.skip(f"torch.compile cannot build here: {err}")
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-5)


def test_compile_needs_a_network():
    with pytest.raises(ValueError, match="no torch.nn.Module network"):
        fewstep.compile_denoiser(object())
