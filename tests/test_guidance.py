"""Guidance on exact models: classifier-free guidance, guidance intervals, classifier guidance (Bayes' rule),
and temperature calibration, each against the closed-form answer of a class-conditional Gaussian mixture."""

import math

import pytest
import torch

import fewstep
from fewstep.denoisers import GuidanceInterval
from fewstep.exact import ClassConditionalMixture, GaussianMixture
from fewstep.guidance import (ClassifierFreeGuidance, ClassifierGuidance, TemperatureCalibrated, calibrate,
                              class_labels, expected_calibration_error, fit_temperature, guide)
from fewstep.processes import EDM, VPDiscrete, VPLinear

DIM = 6


@pytest.fixture(scope="module")
def model():
    mix = GaussianMixture.random_low_rank(dim=DIM, components=6, rank=2, spread=1.5, scale=0.4, floor=0.1, seed=3)
    return ClassConditionalMixture(mix, [0, 1, 2, 0, 1, 2])


def _x(n, seed=0, scale=2.0):
    return torch.randn(n, DIM, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * scale


PROCESSES = [VPDiscrete.linear(), VPLinear(), EDM()]


@pytest.mark.parametrize("process", PROCESSES, ids=lambda p: type(p).__name__)
def test_cfg_scale_one_is_conditional_and_scale_w_is_the_formula(model, process):
    den = model.denoiser(process)
    labels = torch.tensor([0, 1, 2, 1])
    x = _x(4)
    for t in (0.2 * process.t_max + 0.8 * process.t_min, 0.5 * (process.t_min + process.t_max)):
        cond = den.predict(x, t, class_labels=labels)
        uncond = den.predict(x, t, class_labels=torch.full_like(labels, 3))
        same = ClassifierFreeGuidance(den, 1.0, {"class_labels": 3}).predict(x, t, class_labels=labels)
        assert torch.equal(same.x0, cond.x0) and torch.equal(same.eps, cond.eps)
        for w in (0.0, 2.5):
            p = ClassifierFreeGuidance(den, w, {"class_labels": 3}).predict(x, t, class_labels=labels)
            torch.testing.assert_close(p.x0, uncond.x0 + w * (cond.x0 - uncond.x0), rtol=0, atol=1e-12)
            torch.testing.assert_close(p.eps, uncond.eps + w * (cond.eps - uncond.eps), rtol=0, atol=1e-12)
        # the null class of the exact model is its unconditional denoiser
        torch.testing.assert_close(uncond.x0, den.predict(x, t).x0, rtol=0, atol=1e-12)


def test_guidance_interval_switches_at_the_right_noise_levels(model):
    process = VPDiscrete.linear()
    den = model.denoiser(process)
    lo, hi = 0.5, 3.0
    labels = torch.tensor([2, 0])
    x = _x(2, seed=1)
    cfg = ClassifierFreeGuidance(den, 3.0, {"class_labels": 3}, interval=(lo, hi))
    full = ClassifierFreeGuidance(den, 3.0, {"class_labels": 3})
    ts = process.t_of_sigma_hat(torch.tensor([0.3, 0.5 * 1.0001, 0.5 * 0.9999, 1.0, 3.0 * 0.9999, 3.0 * 1.0001, 20.0]))
    for t in ts.tolist():
        sigma_hat = float(torch.exp(-process.lam(t)))
        inside = lo < sigma_hat <= hi
        want = full if inside else den
        got = cfg.predict(x, t, class_labels=labels)
        ref = want.predict(x, t, class_labels=labels)
        assert torch.equal(got.x0, ref.x0), (sigma_hat, inside)
    # per-sample times: each sample guided or not by its own noise level
    t = torch.tensor([ts[0].item(), ts[3].item()], dtype=torch.float64)
    got = cfg.predict(x, t, class_labels=labels)
    torch.testing.assert_close(got.x0[0], den.predict(x[:1], t[:1], class_labels=labels[:1]).x0[0], rtol=0, atol=1e-12)
    torch.testing.assert_close(got.x0[1], full.predict(x[1:], t[1:], class_labels=labels[1:]).x0[0], rtol=0, atol=1e-12)
    assert GuidanceInterval.parse("0.3,inf") == GuidanceInterval(0.3, math.inf)
    with pytest.raises(ValueError, match="lo < hi"):
        GuidanceInterval.parse("5,1")
    with pytest.raises(ValueError, match="two noise levels"):
        GuidanceInterval.parse("a,b")


@pytest.mark.parametrize("process", PROCESSES, ids=lambda p: type(p).__name__)
def test_classifier_guidance_with_the_exact_classifier_is_bayes_rule(model, process):
    """s = 1: the exact unconditional denoiser + grad log p(c|x_t) is the exact conditional denoiser."""
    den = model.denoiser(process)
    guided = ClassifierGuidance(den, model.classifier(), 1.0)
    labels = torch.tensor([0, 1, 2, 2, 0])
    x = _x(5, seed=2)
    for frac in (0.05, 0.3, 0.7):
        t = process.t_min + frac * (process.t_max - process.t_min)
        ref = den.predict(x, t, class_labels=labels)
        with torch.inference_mode():  # as inside fewstep.sample
            p = guided.predict(x, t, class_labels=labels)
        torch.testing.assert_close(p.x0, ref.x0, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(p.eps, ref.eps, rtol=1e-9, atol=1e-9)
    # per-sample times
    t = torch.linspace(process.t_min + 0.1 * (process.t_max - process.t_min), 0.6 * process.t_max, 5,
                       dtype=torch.float64)
    torch.testing.assert_close(guided.predict(x, t, class_labels=labels).x0,
                               den.predict(x, t, class_labels=labels).x0, rtol=1e-9, atol=1e-9)


def test_sampling_with_classifier_guidance_gives_the_conditional_mixture(model):
    process = VPDiscrete.linear()
    den = model.denoiser(process)
    guided = ClassifierGuidance(den, model.classifier(), 1.0)
    n, c = 2000, 1
    labels = torch.full((n,), c)
    x_T = fewstep.prior_noise(process, (DIM,), fewstep.generators(range(n)), dtype=torch.float64)
    a = fewstep.sample(guided, x_T, "dpm++2m", 20, cond={"class_labels": labels})
    b = fewstep.sample(den, x_T, "dpm++2m", 20, cond={"class_labels": labels})
    torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-7)  # the same ODE, solved the same way
    target = model.component(c)
    se = (target.covariance.diagonal() / n).sqrt()
    assert ((a.mean(0) - target.mean).abs() < 5 * se + 0.02).all()
    assert (a.var(0) / target.covariance.diagonal()).sub(1).abs().max() < 0.2
    # and not the unconditional mixture: the class mean is far from it in some coordinate
    assert ((model.mixture.mean - target.mean).abs() > 10 * se).any()


def test_classifier_guidance_scale_and_interval(model):
    process = VPLinear()
    den = model.denoiser(process)
    clf = model.classifier()
    labels = torch.tensor([1, 2])
    x = _x(2, seed=4)
    t = 0.4
    base = den.predict(x, t)
    g1 = ClassifierGuidance(den, clf, 1.0).predict(x, t, class_labels=labels)
    g3 = ClassifierGuidance(den, clf, 3.0).predict(x, t, class_labels=labels)
    torch.testing.assert_close(g3.eps - base.eps, 3 * (g1.eps - base.eps), rtol=1e-9, atol=1e-12)
    sigma_hat = float(torch.exp(-process.lam(t)))
    off = ClassifierGuidance(den, clf, 3.0, interval=(sigma_hat * 1.01, 100.0)).predict(x, t, class_labels=labels)
    assert torch.equal(off.x0, base.x0)
    on = ClassifierGuidance(den, clf, 3.0, interval=(sigma_hat * 0.99, 100.0)).predict(x, t, class_labels=labels)
    assert torch.equal(on.x0, g3.x0)


def test_calibration_recovers_a_known_temperature(model):
    """An exact classifier made over-confident by a factor 2 is calibrated back to temperature 2."""

    class Overconfident:
        num_classes = model.num_classes

        def logits(self, y, sigma_hat):
            return 2.0 * model.classifier().logits(y, sigma_hat)

    x0, labels = model.sample(20000, torch.Generator().manual_seed(0))
    calibrated, rows = calibrate(Overconfident(), x0, labels, [1.0, 2.0, 4.0], seed=1)
    for r in rows:
        assert abs(r.temperature - 2.0) < 0.1, r
        assert r.ece_calibrated < r.ece
        assert r.nll_calibrated <= r.nll
    y, s = _x(3, seed=5), 2.0
    torch.testing.assert_close(calibrated.logits(y, s), model.classifier().logits(y, s) * 2.0 / rows[1].temperature)
    # the exact classifier is calibrated already: its temperature is 1
    _, rows1 = calibrate(model.classifier(), x0, labels, [2.0], seed=1)
    assert abs(rows1[0].temperature - 1.0) < 0.05


def test_fit_temperature_and_ece_on_known_logits():
    gen = torch.Generator().manual_seed(0)
    f = torch.randn(40000, 4, generator=gen, dtype=torch.float64) * 2
    labels = torch.multinomial(torch.softmax(f, 1), 1, generator=gen).squeeze(1)  # labels drawn from softmax(f)
    assert abs(fit_temperature(f, labels) - 1.0) < 0.03
    assert abs(fit_temperature(f / 3, labels) - 1 / 3) < 0.01
    assert expected_calibration_error(f, labels) < 0.02
    assert expected_calibration_error(3 * f, labels) > 0.1


def test_temperature_interpolates_in_log_sigma(model):
    cal = TemperatureCalibrated(model.classifier(), [0.1, 10.0], [1.0, 3.0])
    assert float(cal.temperature(1.0)) == pytest.approx(2.0)
    assert float(cal.temperature(0.01)) == pytest.approx(1.0) and float(cal.temperature(100.0)) == pytest.approx(3.0)
    with pytest.raises(ValueError, match="increase"):
        TemperatureCalibrated(model.classifier(), [1.0, 0.5], [1.0, 1.0])


def test_eluCD_temperatures_equal_temperature_scaling(model):
    """tau_joint = tau_marginal = 1/T guides exactly like the classifier with logits / T."""
    den = model.denoiser(VPLinear())
    x, t, labels = _x(3, seed=6), 0.5, torch.tensor([0, 1, 2])
    a = ClassifierGuidance(den, model.classifier(), 2.0, joint_temperature=0.5, marginal_temperature=0.5)
    b = ClassifierGuidance(den, TemperatureCalibrated(model.classifier(), [1.0], [2.0]), 2.0)
    torch.testing.assert_close(a.predict(x, t, class_labels=labels).x0, b.predict(x, t, class_labels=labels).x0,
                               rtol=1e-10, atol=1e-12)


def test_errors_are_clear(model):
    process = VPLinear()
    den = model.denoiser(process)
    x = _x(2)
    with pytest.raises(ValueError, match="needs the target classes"):
        ClassifierGuidance(den, model.classifier(), 1.0).predict(x, 0.5)
    with pytest.raises(ValueError, match=r"class labels must lie in \[0, 2\]"):
        ClassifierGuidance(den, model.classifier(), 1.0).predict(x, 0.5, class_labels=torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="out of range: this model has 3 classes"):
        class_labels(5, 4, 3)
    with pytest.raises(ValueError, match="unconditional"):
        class_labels(0, 4, 0)
    assert class_labels("all", 7, 3).tolist() == [0, 1, 2, 0, 1, 2, 0]
    assert class_labels("2,0", 3, 3).tolist() == [2, 0, 2]
    unconditional = GaussianMixture.random_low_rank(dim=DIM, components=2, rank=2, seed=0).denoiser(process)
    with pytest.raises(ValueError, match="classifier-free guidance needs a class-conditional model"):
        guide(unconditional, "cfg", 2.0)
    with pytest.raises(ValueError, match="needs a noise-aware classifier"):
        guide(unconditional, "classifier", 2.0)
    with pytest.raises(ValueError, match="unknown guidance"):
        guide(den, "clip", 2.0)
    assert isinstance(guide(den, "cfg", 2.0, interval="0.1,5"), ClassifierFreeGuidance)
