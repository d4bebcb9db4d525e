"""bf16 network evaluation (fewstep.precision): only the network runs in bf16; everything else keeps its dtype."""

from __future__ import annotations

import copy

import pytest
import torch

import fewstep
from fewstep.compose import compose_sampler
from fewstep.denoisers import Denoiser
from fewstep.nets import build_net
from fewstep.precision import AutocastNetwork, set_precision
from fewstep.processes import VPDiscrete


def _denoiser(prediction: str = "v") -> Denoiser:
    torch.manual_seed(0)
    net = build_net({"kind": "unet", "in_channels": 1, "resolution": 8, "channels": 8, "channel_mult": [1, 2],
                     "num_res_blocks": 1, "attn_resolutions": [4], "head_dim": 8})
    with torch.no_grad():  # the output layer starts at zero: give it weights, so the output depends on the rest
        for p in net.parameters():
            if not p.any():
                p.normal_(0, 0.1)
    net.eval()
    return Denoiser(net, VPDiscrete.linear(), prediction, sample_shape=(1, 8, 8),
                    config={"network": {"kind": "unet"}})


def test_convolutions_see_bf16_and_the_output_keeps_the_state_dtype():
    den = _denoiser()
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        ref = den.predict(x, 600.0)
    seen: list[torch.dtype] = []
    conv = next(m for m in den.net.modules() if isinstance(m, torch.nn.Conv2d))
    handle = conv.register_forward_hook(lambda m, inp, out: seen.append(out.dtype))
    set_precision(den, "bf16")
    with torch.no_grad():
        got = den.predict(x, 600.0)
    handle.remove()
    assert seen == [torch.bfloat16]
    assert got.x0.dtype == torch.float32 and got.eps.dtype == torch.float32
    # bf16 keeps 8 bits of mantissa: a few parts in a thousand of the output's scale, not more
    err = (got.x0 - ref.x0).abs().max() / ref.x0.abs().max()
    assert 0 < err < 0.05


def test_fp32_is_a_no_op_and_bf16_wraps_once():
    den = _denoiser()
    net = den.net
    assert set_precision(den, "fp32").net is net
    set_precision(den, "bf16")
    set_precision(den, "bf16")
    assert isinstance(den.net, AutocastNetwork) and den.net.inner is net
    assert [k.removeprefix("inner.") for k in den.net.state_dict()] == list(net.state_dict())


def test_bad_precision_and_quantized_models_are_refused():
    with pytest.raises(ValueError, match="unknown precision 'fp16'; valid: fp32, bf16"):
        set_precision(_denoiser(), "fp16")
    den = _denoiser()
    den.config = {"quantization": {"bits": 8}}
    with pytest.raises(ValueError, match="int8-quantized"):
        set_precision(den, "bf16")


def test_sampling_in_bf16_stays_close_and_is_seed_deterministic_across_batches():
    den = _denoiser()
    plan = fewstep.make_plan(den, "dpm++2m", 6)
    ref = fewstep.generate(den, (1, 8, 8), [0, 1, 2, 3], plan)
    set_precision(den, "bf16")
    a = fewstep.generate(den, (1, 8, 8), [0, 1, 2, 3], plan)
    b = torch.cat([fewstep.generate(den, (1, 8, 8), [s], plan) for s in range(4)])
    assert a.dtype == torch.float32
    assert (a - ref).abs().max() < 0.1 * ref.abs().max()
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


def test_composes_with_a_feature_cache():
    den = _denoiser()
    plan = fewstep.make_plan(den, "dpm++2m", 6)
    plain = compose_sampler(copy.deepcopy(den), cache="deepcache:2")
    half = compose_sampler(copy.deepcopy(den), cache="deepcache:2", precision="bf16")
    a = fewstep.generate(plain.denoiser, (1, 8, 8), [0, 1], plan)
    b = fewstep.generate(half.denoiser, (1, 8, 8), [0, 1], plan)
    assert half.cache.cached_evals == plain.cache.cached_evals > 0
    assert (a - b).abs().max() < 0.1 * a.abs().max()


def test_fast_bf16_here_and_the_training_hint(monkeypatch):
    from types import SimpleNamespace

    from fewstep.commands.train import _bf16_would_pay
    from fewstep.precision import fast_bf16_here

    assert fast_bf16_here("cpu") == bool(torch.cpu._is_amx_tile_supported())
    assert fast_bf16_here("meta") is False
    monkeypatch.setattr("fewstep.precision.fast_bf16_here", lambda device="cpu": True)

    def trainer(device: str, precision: str) -> SimpleNamespace:
        return SimpleNamespace(device=torch.device(device), settings=SimpleNamespace(precision=precision))

    assert _bf16_would_pay(trainer("cpu", "fp32")) and _bf16_would_pay(trainer("cpu", "auto"))
    assert not _bf16_would_pay(trainer("cpu", "bf16")) and not _bf16_would_pay(trainer("cuda", "fp32"))
