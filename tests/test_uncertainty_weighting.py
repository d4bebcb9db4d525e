"""EDM2's learned uncertainty weighting: the optimum ``u = log E[w L | sigma]``, the gradients of
``w L / exp(u) + u``, training and checkpointing of the head, and the default objective unchanged."""

import math

import pytest
import torch

from conftest import tiny_config, tiny_images
from fewstep.data import ImageData
from fewstep.training.losses import diffusion_loss
from fewstep.training.trainer import Trainer
from fewstep.training.uncertainty import UncertaintyHead, uncertainty_loss


def test_gradients_of_the_loss():
    wl = torch.tensor([0.3, 2.0], dtype=torch.float64, requires_grad=True)
    u = torch.tensor([0.5, -1.0], dtype=torch.float64, requires_grad=True)
    uncertainty_loss(wl, u).sum().backward()
    assert torch.allclose(u.grad, 1 - wl.detach() * torch.exp(-u.detach()))  # d/du = 1 - wL e^-u
    assert torch.allclose(wl.grad, torch.exp(-u.detach()))  # the network's loss is scaled by e^-u


def test_optimum_is_the_log_of_the_expected_weighted_loss():
    # a fixed per-noise-level loss: 3 levels, 50 samples each with known means
    g = torch.Generator().manual_seed(0)
    levels = torch.tensor([-2.0, 0.3, 2.5])
    log_sigma = levels.repeat_interleave(50)
    wl = torch.rand(150, generator=g) * torch.tensor([0.02, 1.0, 30.0]).repeat_interleave(50)
    head = UncertaintyHead(features=32)
    assert torch.equal(head(levels), torch.zeros(3))  # starts at the plain weighted loss
    opt = torch.optim.LBFGS(head.parameters(), lr=1, max_iter=200, tolerance_grad=1e-10, tolerance_change=1e-12,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = uncertainty_loss(wl, head(log_sigma)).mean()
        loss.backward()
        return loss

    for _ in range(5):
        opt.step(closure)
    expect = torch.log(wl.reshape(3, 50).mean(1))
    assert torch.allclose(head(levels).detach(), expect, atol=2e-3), (head(levels), expect)


def _trainer(tmp_path, name="run", **training):
    return Trainer(tiny_config(**training), ImageData(tiny_images()), tmp_path / name, progress=False)


def test_network_gradient_is_scaled_by_exp_minus_u(tmp_path):
    plain = _trainer(tmp_path, "plain", grad_clip=None)
    learned = _trainer(tmp_path, "learned", grad_clip=None, uncertainty_weighting=True)
    learned.model.load_state_dict(plain.model.state_dict())
    with torch.no_grad():
        learned.modules["uncertainty"].linear.bias.fill_(0.7)
    batch = plain.batch(0)
    assert torch.equal(batch["t"], learned.batch(0)["t"])
    plain.accumulate_gradients(0, batch)
    learned.accumulate_gradients(0, batch)
    for a, b in zip(plain.model.parameters(), learned.model.parameters()):
        assert torch.allclose(b.grad, math.exp(-0.7) * a.grad, rtol=1e-4, atol=1e-9)
    # the head's bias gradient: mean over the batch of 1 - wL e^-u
    with torch.no_grad():
        wl = diffusion_loss(plain.model, "eps", plain.objective.process, batch["x0"], batch["t"], batch["eps"])
    bias = learned.modules["uncertainty"].linear.bias.grad
    assert float(bias) == pytest.approx(float((1 - wl * math.exp(-0.7)).mean()), rel=1e-4)


def test_head_is_trained_saved_and_resumed_exactly(tmp_path):
    full = _trainer(tmp_path, "full", steps=6, uncertainty_weighting=True)
    losses = full.fit()
    head = full.modules["uncertainty"]
    assert float(head.linear.bias.detach()) != 0.0  # stepped by the model's optimiser
    assert "uncertainty" not in full.emas  # never sampled: no EMA
    part = _trainer(tmp_path, "part", steps=6, uncertainty_weighting=True)
    first = part.fit(steps=3)
    files = {p.name for p in part.save().iterdir()}
    assert {"uncertainty.safetensors", "model.safetensors", "ema.safetensors"} <= files
    again = _trainer(tmp_path, "part", steps=6, uncertainty_weighting=True)
    assert again.resume() == 3
    assert first + again.fit() == losses
    assert torch.equal(again.modules["uncertainty"].linear.weight, head.linear.weight)
    from fewstep import load_model
    load_model(tmp_path / "full")  # the sampling side reads the model as before


def test_default_objective_is_unchanged(tmp_path):
    tr = _trainer(tmp_path, steps=2)
    assert set(tr.modules) == {"model"} and tr.phases[0].also == ()
    assert [len(g["params"]) for g in tr.optimizer.param_groups] == [len(list(tr.model.parameters()))]
    batch = tr.batch(0)
    with torch.no_grad():
        got = tr.objective.loss(batch, tr.modules)
        want = diffusion_loss(tr.model, "eps", tr.objective.process, batch["x0"], batch["t"], batch["eps"])
    assert torch.equal(got, want)
    tr.fit()
    assert {p.name for p in tr.save().iterdir()} == {"config.json", "model.safetensors", "ema.safetensors",
                                                     "optimizer.safetensors", "optimizer.json", "rng.safetensors",
                                                     "checksums.json"}


def test_setting_is_strict(tmp_path):
    with pytest.raises(ValueError, match="objective.uncertainty_weighting must be bool"):
        Trainer({**tiny_config(), "objective": {"kind": "denoising", "uncertainty_weighting": 1}},
                ImageData(tiny_images()), tmp_path / "r", progress=False)


def _ddp_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    import gc
    import os

    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        tr = Trainer(tiny_config(grad_accum=2, uncertainty_weighting=True), ImageData(tiny_images()), out_dir,
                     device="cpu", progress=False)
        tr.accumulate_gradients()
        if rank == 0:
            torch.save({n: p.grad.clone() for n, p in tr.modules["uncertainty"].named_parameters()},
                       os.path.join(out_dir, "ddp.pt"))
        del tr  # its DDP reducer must go before the process group it uses
        gc.collect()
    finally:
        dist.barrier()  # no rank tears the group down while another is still in a collective
        dist.destroy_process_group()


def test_ddp_averages_the_heads_gradient(tmp_path):
    import torch.multiprocessing as mp

    out = tmp_path / "ddp"
    out.mkdir()
    mp.start_processes(_ddp_worker, args=(2, str(tmp_path / "init"), str(out)), nprocs=2, join=True,
                       start_method="spawn")
    ddp = torch.load(out / "ddp.pt", weights_only=True)
    single = _trainer(tmp_path, "single", uncertainty_weighting=True)
    single.accumulate_gradients()
    for name, p in single.modules["uncertainty"].named_parameters():
        assert torch.allclose(p.grad, ddp[name], rtol=1e-4, atol=1e-7), name
