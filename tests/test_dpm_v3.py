"""DPM-Solver-v3: EMS against closed forms, reduction to DPM-Solver++, order, exact NFE, storage, refusal, resume."""

import json
import math

import numpy as np
import pytest
import torch

import fewstep
from conftest import seeded_noise, tiny_config, tiny_images
from fewstep.cli import main
from fewstep.data import ImageData
from fewstep.denoisers import NFECounter
from fewstep.exact import GaussianMixture, reference_solution
from fewstep.grids import make_schedule
from fewstep.processes import VPDiscrete, VPLinear
from fewstep.solvers.dpm_v3 import EMS, EMSMismatch, dpm_v3
from fewstep.tuning import compute_ems
from fewstep.tuning import ems as compute_module


@pytest.fixture(scope="module")
def gmm8_ems():
    """EMS of the 8-d test mixture (conftest's gmm8) under the continuous linear VP process."""
    mix = GaussianMixture.random_low_rank(dim=8, components=3, rank=2, floor=0.05, seed=1)
    den = mix.denoiser(VPLinear())
    ems = compute_ems(den, mix.sample(4096, torch.Generator().manual_seed(0)), n_lambda=40, n_samples=512,
                      batch_size=512, progress=False)
    return den, ems


def gaussian_ems(mu: torch.Tensor, cov: torch.Tensor, lam: float):
    """The optimal l, s, b of N(mu, cov), where x0(y) = mu + K (y - mu), K = C (C + e^{-2 lam} I)^{-1}.

    f = (1 - l) y - x0 = A y - (I - K) mu with A = Diag(K) - K (l = 1 - diag K zeroes A's diagonal);
    along the ODE y' = -(I - K)(y - mu), K' = 2 e^{-2 lam} C (C + e^{-2 lam})^{-2}, so
    f' = A' y - A (I - K)(y - mu) + K' mu; y ~ N(mu, C + e^{-2 lam} I) gives the moments exactly.
    """
    d = len(mu)
    eye = torch.eye(d, dtype=torch.float64)
    sig = cov + math.exp(-2 * lam) * eye
    inv = torch.linalg.inv(sig)
    k = cov @ inv
    dk = 2 * math.exp(-2 * lam) * cov @ inv @ inv
    a, da = torch.diag(torch.diag(k)) - k, torch.diag(torch.diag(dk)) - dk
    m = da - a @ (eye - k)
    ef, edf = a @ mu - (eye - k) @ mu, da @ mu + dk @ mu
    s = torch.diag(a @ sig @ m.T) / torch.diag(a @ sig @ a.T)
    return 1 - torch.diag(k), s, edf - s * ef


def test_ems_of_a_gaussian_match_the_closed_form():
    g = torch.Generator().manual_seed(0)
    q = torch.linalg.qr(torch.randn(3, 3, generator=g, dtype=torch.float64))[0]
    cov = q @ torch.diag(torch.tensor([0.3, 1.0, 2.0], dtype=torch.float64)) @ q.T
    mu = torch.tensor([0.5, -0.3, 1.0], dtype=torch.float64)
    mix = GaussianMixture.from_covariances(mu[None], cov[None])
    den = mix.denoiser(VPDiscrete.linear())
    ems = compute_ems(den, mix.sample(20000, g), n_lambda=48, n_samples=8000, batch_size=8000, progress=False)
    for k in range(2, 47, 4):  # interior points (the spline derivative of l is one-sided at the ends)
        l, s, b = gaussian_ems(mu, cov, float(ems.lam[k]))
        assert torch.allclose(ems.l[k], l, atol=5e-3), (k, ems.l[k], l)
        assert torch.allclose(ems.s[k], s, atol=0.08 * max(1.0, float(s.abs().max()))), (k, ems.s[k], s)
        assert torch.allclose(ems.b[k], b, atol=0.03), (k, ems.b[k], b)
    # noisy end: x0 ~ E[x0], so l = 1 (data prediction); clean end: l = 0 (noise prediction)
    assert torch.allclose(ems.l[0], torch.ones(3, dtype=torch.float64), atol=1e-3)
    assert float(ems.l[-1].abs().max()) < 1e-3


@pytest.mark.parametrize("nfe,grid,clean_end", [(5, "logsnr", True), (8, "uniform", True), (12, "logsnr", False)])
def test_degenerate_statistics_reduce_to_dpmpp(gmm8, ddpm_linear, nfe, grid, clean_end):
    """l = 1, s = b = 0 is DPM-Solver++ in data prediction: 3M (Taylor weights) and, at order 1, DDIM."""
    den = gmm8.denoiser(ddpm_linear)
    x = seeded_noise(ddpm_linear, 6, 8)
    v3 = fewstep.sample(den, x, "dpm_v3", nfe, grid, ems="degenerate", corrector=False, pseudo=False,
                        clean_end=clean_end)
    assert torch.allclose(v3, fewstep.sample(den, x, "dpm++3m", nfe, grid, clean_end=clean_end), rtol=0, atol=1e-12)
    v1 = fewstep.sample(den, x, "dpm_v3", nfe, grid, ems="degenerate", corrector=False, order=1, clean_end=clean_end)
    assert torch.allclose(v1, fewstep.sample(den, x, "ddim", nfe, grid, clean_end=clean_end), rtol=0, atol=1e-12)


def _order(den, ems, x_T, ref, steps_list, **options):
    errs = []
    for n in steps_list:
        out = dpm_v3(den, x_T, make_schedule(den.process, n, "logsnr", clean_end=False), ems=ems, **options)
        errs.append(float((out - ref).pow(2).mean(1).sqrt().median()))
    return -np.polyfit(np.log(steps_list), np.log(errs), 1)[0], errs


def test_order_of_convergence(gmm8_ems):
    den, ems = gmm8_ems
    x_T = seeded_noise(den.process, 16, 8)
    ref = reference_solution(den, x_T, t_end=den.process.t_min)
    steps = [16, 24, 32, 48]
    for options, lo, hi in [({"corrector": False, "order": 1}, 0.7, 1.3), ({"corrector": False, "order": 2}, 1.7, 2.5),
                            ({"corrector": False}, 2.7, 3.6), ({}, 2.7, 4.5)]:
        p, errs = _order(den, ems, x_T, ref, steps, **options)
        assert lo < p < hi, (options, p, errs)


@pytest.mark.parametrize("clean_end", [True, False])
def test_nfe_is_exact(gmm8, ddpm_linear, clean_end):
    for nfe in range(1, 13):
        counter = NFECounter(gmm8.denoiser(ddpm_linear))
        x_T = seeded_noise(ddpm_linear, 2, 8)
        fewstep.sample(counter, x_T, "dpm_v3", nfe, "logsnr", clean_end=clean_end, ems="degenerate")
        assert counter.count == nfe, nfe


def test_statistics_of_another_model_or_process_are_refused(gmm8_ems, gmm8):
    den, ems = gmm8_ems
    x = seeded_noise(den.process, 2, 8)
    other = GaussianMixture.random_low_rank(dim=8, components=3, rank=2, floor=0.05, seed=2).denoiser(VPLinear())
    with pytest.raises(EMSMismatch, match="another model"):
        fewstep.sample(other, x, "dpm_v3", 6, ems=ems)
    with pytest.raises(EMSMismatch, match="process"):
        fewstep.sample(gmm8.denoiser(VPDiscrete.linear()), x, "dpm_v3", 6, ems=ems)
    with pytest.warns(UserWarning, match="fewstep ems"):  # no statistics: l = 1, s = b = 0, with a warning
        assert torch.equal(fewstep.sample(den, x, "dpm_v3", 6),
                           fewstep.sample(den, x, "dpm_v3", 6, ems="degenerate"))
    den.ems = ems  # attached (as load_model does): used without being passed
    try:
        assert torch.equal(fewstep.sample(den, x, "dpm_v3", 6), fewstep.sample(den, x, "dpm_v3", 6, ems=ems))
        assert torch.equal(fewstep.sample(NFECounter(den), x, "dpm_v3", 6), fewstep.sample(den, x, "dpm_v3", 6))
    finally:
        del den.ems


def test_save_load_round_trip(gmm8_ems, tmp_path):
    den, ems = gmm8_ems
    ems.save(tmp_path / "ems", dtype=torch.float64)
    back = EMS.load(tmp_path / "ems")
    for name in ("lam", "l", "s", "b"):
        assert torch.equal(getattr(back, name), getattr(ems, name))
    assert back.meta == json.loads(json.dumps(ems.meta))
    x = seeded_noise(den.process, 4, 8)
    assert torch.equal(fewstep.sample(den, x, "dpm_v3", 7, ems=back), fewstep.sample(den, x, "dpm_v3", 7, ems=ems))
    ems.save(tmp_path / "half", dtype=torch.float16)
    assert (tmp_path / "half" / "ems.safetensors").stat().st_size < (tmp_path / "ems" / "ems.safetensors").stat().st_size
    with pytest.raises(FileNotFoundError, match="fewstep ems"):
        EMS.load(tmp_path / "nothing")


@pytest.fixture
def tiny_checkpoint(tmp_path):
    from fewstep.training.trainer import Trainer

    tr = Trainer(tiny_config(), ImageData(tiny_images()), tmp_path / "run", progress=False)
    tr.fit(steps=1)
    np.savez(tmp_path / "data.npz", images=tiny_images().numpy())
    return tmp_path / "run" / "checkpoints" / "step-00000001", tmp_path / "data.npz"


def test_ems_command_resumes_and_load_model_finds_it(tiny_checkpoint, tmp_path, monkeypatch, capsys):
    ckpt, data = tiny_checkpoint
    args = ["ems", "--model", str(ckpt), "--data", str(data), "--n-lambda", "4", "--n-samples", "6",
            "--batch-size", "4", "--no-progress", "--threads", "1"]
    real, calls = compute_module._moments_at, []

    def interrupted(*a, **k):  # the third lambda's first batch is interrupted
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(compute_module, "_moments_at", interrupted)
    assert main(args) == 130
    assert sorted(p.name for p in (ckpt / "ems" / "partial").glob("lam-*")) == ["lam-00000.safetensors",
                                                                                "lam-00001.safetensors"]
    calls.clear()
    monkeypatch.setattr(compute_module, "_moments_at", lambda *a, **k: (calls.append(1), real(*a, **k))[1])
    assert main(args) == 0
    assert len(calls) == 3 * 2  # the three missing lambdas, two batches each
    assert not (ckpt / "ems" / "partial").exists()
    assert main(args[:-5] + ["--batch-size", "3", "--no-progress", "--out", str(tmp_path / "fresh")]) == 0
    resumed, fresh = EMS.load(ckpt / "ems"), EMS.load(tmp_path / "fresh")
    assert torch.allclose(resumed.l, fresh.l) and torch.allclose(resumed.s, fresh.s)
    den = fewstep.load_model(ckpt)
    assert isinstance(den.ems, EMS)
    out = fewstep.generate(den, (1, 8, 8), [0, 1], "dpm_v3", 4)
    assert torch.isfinite(out).all()
    # statistics of other weights are refused
    meta = json.loads((ckpt / "ems" / "ems.json").read_text())
    meta["fingerprint"] = "0" * 64
    (ckpt / "ems" / "ems.json").write_text(json.dumps(meta))
    with pytest.raises(EMSMismatch, match="another model"):
        fewstep.generate(fewstep.load_model(ckpt), (1, 8, 8), [0], "dpm_v3", 4)
    # other settings on the same partial folder are refused
    (tmp_path / "p").mkdir()
    compute_ems(den, torch.zeros(4, 1, 8, 8), n_lambda=2, n_samples=2, state_dir=tmp_path / "p", progress=False)
    with pytest.raises(ValueError, match="other settings"):
        compute_ems(den, torch.zeros(4, 1, 8, 8), n_lambda=3, n_samples=2, state_dir=tmp_path / "p", progress=False)


def test_dpm_v3_is_registered():
    spec = fewstep.solvers.get("dpm_v3")
    assert spec.order == 3 and "DPM-Solver-v3" in spec.paper and not spec.stochastic
    assert {"order", "corrector", "pseudo", "ems"} <= set(spec.options)
