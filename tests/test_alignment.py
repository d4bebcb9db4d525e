"""Representation alignment (REPA, its HASTE early stop) and the dispersive loss: the maths on exact cases, the
training objective's phases and switches, the encoder, strict configs."""

import math

import pytest
import torch

from conftest import tiny_encoder, tiny_images
from fewstep import load_model
from fewstep.data import ImageData
from fewstep.training import Trainer, load_encoder, resolve_config
from fewstep.training.alignment import TapRecorder, dispersive_loss, feature_map, recording_context, repa_loss
from fewstep.training.losses import diffusion_loss


def test_repa_loss_is_minus_one_when_the_features_agree_up_to_scale():
    g = torch.Generator().manual_seed(0)
    target = torch.randn(3, 5, 4, 4, generator=g)
    scale = torch.rand(3, 1, 4, 4, generator=g) * 10 + 0.1  # any positive scale, per sample and position
    assert torch.allclose(repa_loss(target * scale, target), torch.full((3,), -1.0), atol=1e-6)
    assert torch.allclose(repa_loss(-target, target), torch.full((3,), 1.0), atol=1e-6)
    other = repa_loss(torch.randn(3, 5, 4, 4, generator=g), target)
    assert bool((other > -0.9).all()) and bool((other < 0.9).all())


def test_repa_loss_pools_a_finer_grid_onto_the_encoders():
    target = torch.randn(2, 3, 2, 2)
    finer = target.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3) * 2.0  # 4x4, constant on each 2x2 block
    assert torch.allclose(repa_loss(finer, target), torch.full((2,), -1.0), atol=1e-6)
    with pytest.raises(ValueError, match="channels"):
        repa_loss(torch.randn(2, 4, 2, 2), target)


def test_dispersive_loss_matches_its_formula_on_a_tiny_batch():
    z = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
    d2 = {(0, 1): 1.0, (0, 2): 4.0, (1, 2): 5.0}  # squared distances; d = 2 features, tau = 0.5
    total = 3 * 1.0 + 2 * sum(math.exp(-v / 2 / 0.5) for v in d2.values())
    assert float(dispersive_loss(z, 0.5)) == pytest.approx(math.log(total / 9), rel=1e-6)
    tau = 2.0
    total = 3 * 1.0 + 2 * sum(math.exp(-v / 2 / tau) for v in d2.values())
    assert float(dispersive_loss(z.reshape(3, 1, 2), tau)) == pytest.approx(math.log(total / 9), rel=1e-6)


def test_dispersive_loss_is_minimised_by_spread_out_features():
    b = 6
    collapsed = torch.ones(b, 4)
    assert float(dispersive_loss(collapsed)) == pytest.approx(0.0, abs=1e-7)  # its maximum
    spread = torch.eye(b, 4 * b)[:, :] * 50.0
    assert float(dispersive_loss(spread)) == pytest.approx(math.log(1 / b), abs=1e-3)  # its lower limit
    z = (torch.randn(b, 4, generator=torch.Generator().manual_seed(1)) * 0.1).requires_grad_(True)
    start = float(dispersive_loss(z.detach()))
    opt = torch.optim.SGD([z], lr=0.5)
    for _ in range(50):
        opt.zero_grad()
        dispersive_loss(z).backward()
        opt.step()
    assert float(dispersive_loss(z.detach())) < start - 0.5
    assert float(torch.pdist(z.detach()).min()) > 0.5


def test_feature_map_places_dit_tokens_on_their_grid():
    tokens = torch.arange(2 * 9 * 4, dtype=torch.float32).reshape(2, 9, 4)
    m = feature_map(tokens)
    assert m.shape == (2, 4, 3, 3) and torch.equal(m[1, :, 2, 1], tokens[1, 7])


def _encoder(tmp_path, res=8):
    return tiny_encoder(tmp_path / "enc", res)


def _config(align: str, encoder: str = "", **objective) -> dict:
    return {"network": {"kind": "unet", "in_channels": 1, "resolution": 8, "channels": 8, "channel_mult": [1, 2],
                        "num_res_blocks": 1, "attn_resolutions": [], "head_dim": 8},
            "process": {"kind": "vp_discrete", "schedule": "linear", "num_train_timesteps": 1000},
            "prediction": "v",
            "objective": {"kind": "denoising", "align": align, "align_weight": 0.5,
                          **({"align_encoder": encoder} if encoder else {}), **objective},
            "training": {"steps": 3, "batch_size": 4, "warmup_steps": 0, "checkpoint_every_seconds": 0,
                         "log_every": 1}}


def test_encoder_features_and_loading(tmp_path):
    enc = load_encoder(_encoder(tmp_path))
    x = torch.randn(3, 1, 8, 8)
    assert enc.features(x).shape == (3, 6, 2, 2) and enc(x).shape == (3, 10)
    assert not any(p.requires_grad for p in enc.parameters())
    Trainer(_config("off"), ImageData(tiny_images(16, res=8)), tmp_path / "den", device="cpu", progress=False).fit()
    with pytest.raises(ValueError, match="not an encoder checkpoint"):
        load_encoder(str(tmp_path / "den"))
    with pytest.raises(FileNotFoundError, match="fashion-encoder"):
        load_encoder(str(tmp_path / "nowhere"))


def test_repa_objective_adds_lambda_times_the_alignment_and_trains_the_projector(tmp_path):
    enc = _encoder(tmp_path)
    data = ImageData(tiny_images(16, res=8))
    tr = Trainer(_config("repa", enc), data, tmp_path / "run", device="cpu", progress=False)
    assert [p.label for p in tr.phases] == ["loss", "align"] and set(tr.emas) == {"model"}
    obj, batch = tr.objective, tr.batch(0)
    total = obj.loss(batch, {**obj.frozen(), **tr.modules})
    rec = TapRecorder("mid")
    plain = diffusion_loss(tr.model, "v", obj.process, batch["x0"], batch["t"], batch["eps"],
                           cond={"ctx": recording_context(rec)})
    align = repa_loss(tr.modules["projector"](rec.get()), obj.encoder.features(batch["x0"]))
    assert torch.allclose(total, plain + 0.5 * align, atol=1e-6)
    before = [p.detach().clone() for p in tr.modules["projector"].parameters()]
    tr.fit()
    assert any(not torch.equal(a, b) for a, b in zip(before, tr.modules["projector"].parameters()))
    folder = tmp_path / "run" / "checkpoints" / "step-00000003"
    assert (folder / "projector.safetensors").exists() and (folder / "model.safetensors").exists()
    again = Trainer(_config("repa", enc), data, tmp_path / "run", device="cpu", progress=False)
    assert again.resume() == 3
    assert load_model(tmp_path / "run").sample_shape == (1, 8, 8)  # sampling needs no projector nor encoder


@pytest.mark.parametrize("align", ["repa", "dispersive"])
def test_alignment_turns_off_at_the_haste_step(tmp_path, align):
    enc = _encoder(tmp_path) if align == "repa" else ""
    data = ImageData(tiny_images(16, res=8))
    tr = Trainer(_config(align, enc, align_stop_step=2), data, tmp_path / "run", device="cpu", progress=False)
    plain = Trainer(_config("off"), data, tmp_path / "plain", device="cpu", progress=False)
    plain.modules["model"].load_state_dict(tr.modules["model"].state_dict())
    nets = {**tr.objective.frozen(), **tr.modules}
    for step in range(4):
        batch = tr.batch(step)
        assert bool((batch["align_weight"] == (0.5 if step < 2 else 0.0)).all())
        ref = plain.objective.loss({k: v for k, v in batch.items() if k != "align_weight"}, plain.modules)
        got = tr.objective.loss(batch, nets)
        assert torch.equal(got, ref) == (step >= 2), step
    if align == "repa":
        tr.step = 2
        tr.train_step()
        assert tr.loss_history[-1]["align"] == 0.0


@pytest.mark.parametrize("objective, message", [
    ({"align": "repa"}, "needs objective.align_encoder"),
    ({"align": "dispersive", "align_encoder": "x"}, "set align to 'repa'"),
    ({"align": "contrastive"}, "unknown objective.align"),
    ({"align": "dispersive", "align_wieght": 1.0}, "unknown config key.*align_wieght.*did you mean 'align_weight'"),
    ({"align": "dispersive", "align_weight": -1.0}, "align_weight must be non-negative"),
    ({"align": "dispersive", "align_temperature": 0.0}, "align_temperature must be positive"),
    ({"align": "dispersive", "align_stop_step": 1.5}, "align_stop_step must be int"),
    ({"align": "dispersive", "patch_full_fraction": 0.5}, "not supported"),
])
def test_alignment_configs_are_strictly_checked(objective, message):
    cfg = _config("off")
    cfg["objective"].update(objective)
    with pytest.raises(ValueError, match=message):
        resolve_config(cfg)


def test_an_unknown_tap_is_refused_naming_the_networks_taps(tmp_path):
    with pytest.raises(ValueError, match=r"align_tap 'middle'.*mid"):
        Trainer(_config("dispersive", align_tap="middle"), ImageData(tiny_images(16, res=8)), tmp_path,
                device="cpu", progress=False)
