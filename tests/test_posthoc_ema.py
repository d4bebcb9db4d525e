"""Post-hoc EMA (EDM2, Karras et al. 2024, sec. 3): power-function tracks, closed-form profile inner products,
least-squares rebuild, the trainer's tracks and snapshots, and ``fewstep ema``."""


import pytest
import torch
from torch import nn

from conftest import tiny_config, tiny_images
from fewstep.cli import main
from fewstep.data import ImageData
from fewstep.training.ema import make_ema, update_ema
from fewstep.training.posthoc_ema import (SIGMA_REL_MAX, gamma_from_sigma_rel, list_snapshots, power_beta,
                                          power_weights, profile_inner, reconstruct, save_snapshot,
                                          sigma_rel_from_gamma, solve_snapshot_weights, write_posthoc_checkpoint)
from fewstep.training.trainer import Trainer


def test_gamma_matches_the_papers_tracks_and_inverts():
    # EDM2 stores the tracks sigma_rel = 0.05 and 0.10, i.e. gamma = 16.97 and 6.94.
    assert gamma_from_sigma_rel(0.05) == pytest.approx(16.97, abs=0.01)
    assert gamma_from_sigma_rel(0.10) == pytest.approx(6.94, abs=0.01)
    for rel in (0.01, 0.08, 0.2, 0.28):
        assert sigma_rel_from_gamma(gamma_from_sigma_rel(rel)) == pytest.approx(rel, rel=1e-9)
    assert sigma_rel_from_gamma(0.0) == pytest.approx(SIGMA_REL_MAX)


@pytest.mark.parametrize("bad", [0.0, -0.1, SIGMA_REL_MAX, 0.5, float("nan")])
def test_sigma_rel_out_of_range_is_refused(bad):
    with pytest.raises(ValueError, match=r"sigma_rel must lie in \(0, 0.2887\)"):
        gamma_from_sigma_rel(bad)


def test_tracked_power_ema_is_the_direct_weighted_average():
    T, gamma = 60, gamma_from_sigma_rel(0.1)
    g = torch.Generator().manual_seed(0)
    thetas = torch.randn(T, 5, generator=g, dtype=torch.float64)
    model = nn.Linear(5, 1, bias=False).double()
    track = make_ema(model)
    for t in range(1, T + 1):
        with torch.no_grad():
            model.weight.copy_(thetas[t - 1][None])
        update_ema(track, model, power_beta(t, gamma))
    w = power_weights(T, gamma)
    assert float(w.sum()) == pytest.approx(1.0, abs=1e-12)
    assert torch.allclose(track.weight[0], (w[:, None] * thetas).sum(0), atol=1e-12)
    # the profile: (gamma + 1) tau^gamma / t^(gamma + 1) is the limit of the discrete weights times t
    assert float(w[-1]) * T == pytest.approx((gamma + 1) * ((T - 0.5) / T) ** gamma, rel=0.02)


def test_profile_inner_product_in_closed_form_matches_quadrature():
    ta, ga, tb, gb = 700.0, 6.94, 1000.0, 16.97
    tau = torch.linspace(0, ta, 2_000_001, dtype=torch.float64)
    pa = (ga + 1) * tau**ga / ta ** (ga + 1)
    pb = (gb + 1) * tau**gb / tb ** (gb + 1)
    assert profile_inner(ta, ga, tb, gb) == pytest.approx(float(torch.trapezoid(pa * pb, tau)), rel=1e-6)
    assert profile_inner(ta, ga, tb, gb) == pytest.approx(profile_inner(tb, gb, ta, ga))


def test_a_target_among_the_snapshots_gets_weight_one():
    snaps = [(t, g) for t in (200.0, 400.0, 600.0, 800.0, 1000.0) for g in (6.94, 16.97)]
    x = solve_snapshot_weights(snaps, (1000.0, 16.97))
    expect = torch.zeros(len(snaps), dtype=torch.float64)
    expect[-1] = 1.0
    assert torch.allclose(x, expect, atol=1e-6)


def _toy_run(tmp_path, T=1000, every=100, rels=(0.05, 0.10), extra=(0.08,)):
    """A drifting, noisy 'parameter' sequence with tracks ``rels`` snapshotted and ``extra`` tracked directly."""
    g = torch.Generator().manual_seed(1)
    model = nn.Linear(64, 1, bias=False).double()
    tracks = {r: make_ema(model) for r in (*rels, *extra)}
    for t in range(1, T + 1):
        with torch.no_grad():
            drift = torch.sin(torch.linspace(0, 6, 64, dtype=torch.float64) + 4 * t / T) * (1 + t / T)
            model.weight.copy_((drift + 0.3 * torch.randn(64, generator=g, dtype=torch.float64))[None])
        for r, track in tracks.items():
            update_ema(track, model, power_beta(t, gamma_from_sigma_rel(r)))
        if t % every == 0:
            for r in rels:
                save_snapshot(tmp_path, "ema", r, t, {"weight": tracks[r].weight.detach().clone()})
    return {r: tracks[r].weight.detach()[0] for r in tracks}


def test_reconstruction_matches_directly_tracked_emas(tmp_path):
    direct = _toy_run(tmp_path)
    snaps = list_snapshots(tmp_path)
    assert len(snaps) == 20 and {s.step for s in snaps} == set(range(100, 1001, 100))
    same, _ = reconstruct(snaps, 0.10)
    assert torch.allclose(same["weight"][0], direct[0.10], atol=1e-6)
    mid, info = reconstruct(snaps, 0.08)
    assert info["step"] == 1000 and sum(s["weight"] for s in info["snapshots"]) == pytest.approx(1.0, abs=1e-3)
    err = float((mid["weight"][0] - direct[0.08]).norm())
    spread = float((direct[0.05] - direct[0.10]).norm())
    assert err < 0.05 * spread, (err, spread)
    # an earlier step uses only the snapshots before it
    _, early = reconstruct(snaps, 0.08, step=500)
    assert max(s["step"] for s in early["snapshots"]) == 500


def test_bad_inputs_are_clear_errors(tmp_path):
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    with pytest.raises(ValueError, match="no post-hoc EMA snapshots.*posthoc_ema_sigma_rels"):
        write_posthoc_checkpoint(tmp_path / "run", 0.08, tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="not found"):
        write_posthoc_checkpoint(tmp_path / "nothing", 0.08, tmp_path / "out")
    _toy_run(tmp_path / "toy", T=200, every=100)
    with pytest.raises(ValueError, match="no snapshot at or before step 50"):
        reconstruct(list_snapshots(tmp_path / "toy"), 0.08, step=50)
    with pytest.raises(ValueError, match="--sigma-rel must lie in"):
        reconstruct(list_snapshots(tmp_path / "toy"), 0.4)


def test_cli_errors_are_one_line(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    assert main(["ema", "--run", str(tmp_path / "run"), "--sigma-rel", "0.08", "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no post-hoc EMA snapshots" in err


@pytest.mark.parametrize("training, match", [
    ({"posthoc_ema_sigma_rels": [0.05, 0.3], "posthoc_ema_snapshot_every": 2}, "posthoc_ema_sigma_rels entries"),
    ({"posthoc_ema_sigma_rels": [0.05]}, "needs training.posthoc_ema_snapshot_every"),
    ({"posthoc_ema_sigma_rels": [0.05, 0.05], "posthoc_ema_snapshot_every": 2}, "repeats"),
    ({"posthoc_ema_sigma_rels": 0.05, "posthoc_ema_snapshot_every": 2}, "must be a list of float"),
    ({"posthoc_ema_sigma_rel": [0.05]}, "did you mean 'posthoc_ema_sigma_rels'"),
])
def test_config_is_checked(tmp_path, training, match):
    with pytest.raises(ValueError, match=match):
        Trainer(tiny_config(**training), ImageData(tiny_images()), tmp_path / "r", progress=False)


def test_trainer_tracks_snapshots_resume_and_cli(tmp_path, capsys):
    cfg = dict(steps=6, posthoc_ema_sigma_rels=[0.05, 0.1], posthoc_ema_snapshot_every=2)
    full = Trainer(tiny_config(**cfg), ImageData(tiny_images()), tmp_path / "full", progress=False)
    full.fit()
    part = Trainer(tiny_config(**cfg), ImageData(tiny_images()), tmp_path / "part", progress=False)
    part.fit(steps=3)
    part.save()
    resumed = Trainer(tiny_config(**cfg), ImageData(tiny_images()), tmp_path / "part", progress=False)
    assert resumed.resume() == 3
    resumed.fit()
    for key, track in full.posthoc.items():
        for a, b in zip(track.parameters(), resumed.posthoc[key].parameters()):
            assert torch.equal(a, b)
    snaps = list_snapshots(tmp_path / "full")
    assert [(s.step, s.sigma_rel) for s in snaps] == [(2, 0.05), (2, 0.1), (4, 0.05), (4, 0.1), (6, 0.05), (6, 0.1)]
    # the rebuilt EMA at a tracked length is that track; it is an ordinary checkpoint folder
    out = tmp_path / "rebuilt"
    assert main(["ema", "--run", str(tmp_path / "full"), "--sigma-rel", "0.1", "--out", str(out)]) == 0
    from fewstep import load_model
    den = load_model(out)
    for (name, p), q in zip(den.net.named_parameters(), full.posthoc[("model", 0.1)].parameters()):
        assert torch.allclose(p, q, atol=1e-5), name
    assert main(["ema", "--run", str(tmp_path / "full"), "--list"]) == 0
    assert "sigma_rel 0.0500" in capsys.readouterr().out
    # the half-life EMA stays the default: nothing of the tracks without the setting
    plain = Trainer(tiny_config(steps=2), ImageData(tiny_images()), tmp_path / "plain", progress=False)
    plain.fit()
    assert not plain.posthoc and not (tmp_path / "plain" / "posthoc-ema").exists()
    assert not any("posthoc" in p.name for p in plain.save().iterdir())
