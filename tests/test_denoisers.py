import pytest
import torch

from fewstep.denoisers import ClassifierFreeGuidance, Denoiser, DynamicThresholding, NFECounter
from fewstep.processes import EDM, RectifiedFlow, VPDiscrete, VPLinear


def _oracle(process, prediction, x0, eps):
    """A 'network' returning the exact training target for known x0 and eps."""
    def net(x, t_model, **_):
        t = t_model.double()[0]
        a, s = process.alpha(t), process.sigma(t)
        if prediction == "eps":
            return eps
        if prediction == "x0":
            return x0
        if prediction == "v":
            return (a * eps - s * x0).float()
        da, ds = process.derivatives(t)
        return (da * x0 + ds * eps).float()
    return net


@pytest.mark.parametrize("process", [VPDiscrete.linear(), VPLinear(), RectifiedFlow(), EDM()], ids=lambda p: type(p).__name__)
@pytest.mark.parametrize("prediction", ["eps", "x0", "v", "flow"])
def test_prediction_types_recover_x0_and_eps(process, prediction):
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(4, 3, generator=g), torch.randn(4, 3, generator=g)
    t = 0.4 * process.t_max + 0.6 * process.t_min
    if isinstance(process, VPDiscrete):
        t = 400.0
    x = float(process.alpha(t)) * x0 + float(process.sigma(t)) * eps
    p = Denoiser(_oracle(process, prediction, x0, eps), process, prediction).predict(x, t)
    assert torch.allclose(p.x0, x0, atol=2e-4) and torch.allclose(p.eps, eps, atol=2e-4)


def test_edm_preconditioning_formula():
    proc = EDM()
    seen = {}

    def net(x_in, c_noise):
        seen["x_in"], seen["c_noise"] = x_in, c_noise
        return torch.ones_like(x_in)

    x = torch.full((2, 3), 2.0)
    d = Denoiser(net, proc, "edm")(x, 1.5)
    sd = 0.5
    c_skip, c_out, c_in = sd**2 / (1.5**2 + sd**2), 1.5 * sd / (1.5**2 + sd**2) ** 0.5, 1 / (1.5**2 + sd**2) ** 0.5
    assert torch.allclose(seen["x_in"], x * c_in)
    assert torch.allclose(seen["c_noise"], torch.full((2,), torch.log(torch.tensor(1.5)).item() / 4))
    assert torch.allclose(d, c_skip * x + c_out)


def test_wrong_output_shape_is_named():
    den = Denoiser(lambda x, t: x[:, :1], VPDiscrete.linear(), "eps")
    with pytest.raises(ValueError, match=r"returned shape \(2, 1\) for input of shape \(2, 3\)"):
        den(torch.zeros(2, 3), 10.0)


def test_unknown_prediction_type():
    with pytest.raises(ValueError, match="valid: eps, x0, v, flow, edm"):
        Denoiser(lambda x, t: x, VPDiscrete.linear(), "score")


def test_classifier_free_guidance_is_linear_and_one_call():
    calls = []

    def net(x, t, label):
        calls.append(len(x))
        return x * 0 + label.float()[:, None]

    den = NFECounter(Denoiser(net, VPDiscrete.linear(), "eps"))
    cfg = ClassifierFreeGuidance(den, scale=3.0, uncond={"label": torch.zeros(2, dtype=torch.long)})
    eps = cfg.eps(torch.zeros(2, 4), 500.0, label=torch.tensor([1, 2]))
    # eps_u = 0, eps_c = label -> 3 * label
    assert torch.allclose(eps, torch.tensor([[3.0] * 4, [6.0] * 4]))
    assert den.count == 1 and calls == [4]


def test_dynamic_thresholding_clips_to_quantile():
    proc = VPDiscrete.linear()
    x0 = torch.linspace(-4, 4, 101).reshape(1, -1)
    den = DynamicThresholding(Denoiser(lambda x, t: x0.clone(), proc, "x0"), ratio=0.5, max_value=10.0)
    p = den.predict(torch.zeros_like(x0), 500.0)
    s = torch.quantile(x0.abs(), 0.5)
    assert torch.allclose(p.x0, x0.clamp(-s, s) / s)
    a, sg = proc.alpha(500.0).item(), proc.sigma(500.0).item()
    assert torch.allclose(a * p.x0 + sg * p.eps, torch.zeros_like(x0), atol=1e-5)
