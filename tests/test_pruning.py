"""Structured pruning (LD-Pruner, Diff-Pruning): exact removal, scores, selection, the saved smaller model."""

import json

import pytest
import torch

from conftest import TINY_UNET, tiny_config, tiny_images
from fewstep.checkpoint import latest_checkpoint
from fewstep.data import ImageData, to_model_range
from fewstep.denoisers import Denoiser
from fewstep.loading import load_model
from fewstep.nets import build_net
from fewstep.processes import VPDiscrete
from fewstep.pruning import (Unit, check_prunable, check_ratio, finetune_config, ld_scores, output_statistics_distance,
                             prunable_units, prune_denoiser, prune_unet, removed, save_pruned, select_global,
                             select_per_block, taylor_scores)
from fewstep.pruning.units import blocks
from fewstep.training.trainer import Trainer

WIDTHS = [8, 16, 16, 16, 16, 16, 8, 8]  # the tiny UNet's ResBlocks in build order


def _net(seed=0):
    """The tiny UNet with 4 GroupNorm groups per ResBlock (groups of 2-4 channels) and random weights everywhere
    (the zero-initialised output layers too, so every unit matters)."""
    torch.manual_seed(seed)
    net = build_net({**TINY_UNET, "res_hidden": WIDTHS, "res_groups": [4] * 8})
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
    return net.eval()


def _den(net):
    return Denoiser(net, VPDiscrete.linear(), "eps", sample_shape=(1, 8, 8), config={"network": net.config.to_dict()})


def _silence(net, units):
    """Zero what ``units`` pass on: a group's conv2 input columns, an attention block's output projection, and for a
    ResBlock losing every group also conv2's bias, so removing them changes nothing."""
    res, attn = blocks(net)
    with torch.no_grad():
        for u in units:
            if u.kind == "res":
                res[u.index].conv2.weight[:, u.start:u.stop] = 0
            else:
                attn[u.index].proj.weight.zero_()
                attn[u.index].proj.bias.zero_()
        for i, b in enumerate(res):
            if all(any(u.kind == "res" and u.index == i and u.group == g for u in units) for g in range(4)):
                b.conv2.bias.zero_()


X, T = torch.randn(3, 1, 8, 8), torch.tensor([5.0, 300.0, 900.0])


def test_the_smaller_network_reproduces_the_original_when_the_removed_units_were_silent():
    net = _net()
    units = prunable_units(net)
    res_units = [u for u in units if u.kind == "res"]
    attn_units = [u for u in units if u.kind == "attn"]
    assert len(res_units) == 8 * 4 and len(attn_units) == 4  # at resolution 4: down1, mid, both up blocks of level 1
    gone = res_units[1:20:3] + [u for u in res_units if u.index == 2] + attn_units[:1]
    _silence(net, gone)
    with torch.no_grad():
        want = net(X, T)
        small = prune_unet(net, gone)
        got = small(X, T)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert small.config.res_hidden[2] == 0 and small.config.attn_removed == [0]
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in net.parameters())
    assert small.config.res_hidden[0] == 8 - 2 * sum(u.kind == "res" and u.index == 0 for u in gone)  # groups of 2 channels


def test_removal_hooks_compute_exactly_what_the_smaller_network_computes():
    net = _net(1)
    units = prunable_units(net)
    gone = units[::5]
    with torch.no_grad():
        with removed(net, gone):
            hooked = net(X, T)
        plain = net(X, T)
        small = prune_unet(net, gone)(X, T)
    torch.testing.assert_close(small, hooked, atol=1e-5, rtol=1e-5)
    assert (plain - hooked).abs().max() > 1e-3  # the units mattered
    torch.testing.assert_close(net(X, T), plain)  # the hooks are gone


def test_output_statistics_distance_is_the_l2_of_mean_and_std_changes():
    y = torch.tensor([[0.0, 1.0], [2.0, 1.0]])
    y_mod = torch.tensor([[1.0, 4.0], [1.0, 4.0]])
    # means (1, 1) vs (1, 4): 3; stds (1, 0) vs (0, 0): 1
    assert output_statistics_distance(y, y_mod) == pytest.approx(4.0)
    assert output_statistics_distance(y, y) == 0.0


def test_both_scores_rank_a_silenced_unit_lowest():
    net = _net(2)
    units = prunable_units(net)
    res, _ = blocks(net)
    dead = next(u for u in units if u.kind == "res" and u.index == 3 and u.group == 1)
    with torch.no_grad():  # a dead group: everything it owns is zero (conv1 rows, emb rows, norm2, conv2 columns)
        b, sl = res[3], slice(dead.start, dead.stop)
        for w in (b.conv1.weight, b.conv1.bias, b.norm2.weight, b.norm2.bias):
            w[sl] = 0
        b.emb.weight[sl] = 0
        b.emb.bias[sl] = 0
        b.emb.weight[16 + dead.start:16 + dead.stop] = 0
        b.emb.bias[16 + dead.start:16 + dead.stop] = 0
        b.conv2.weight[:, sl] = 0
    den = _den(net)
    x0 = to_model_range(tiny_images(8))
    ld = ld_scores(den, net, units, x0, levels=2)
    assert ld[units.index(dead)] == 0.0 and sorted(ld)[1] > 0
    taylor, _ = taylor_scores(den, net, units, x0, steps=5, thr=0.0)
    assert taylor[units.index(dead)] == 0.0 and sorted(taylor)[1] > 0
    _silence(net, [units[-1]])  # a silenced attention block: removing it changes no output
    assert ld_scores(den, net, [units[-1]], x0, levels=2) == [0.0]


def test_taylor_accumulation_stops_at_the_threshold():
    net = _net(3)
    den, x0 = _den(net), to_model_range(tiny_images(4))
    _, used_all = taylor_scores(den, net, prunable_units(net), x0, steps=6, thr=0.0)
    assert used_all == 6
    _, used = taylor_scores(den, net, prunable_units(net), x0, steps=6, thr=0.999999)
    assert used < 6  # eps loss falls with noise: the first step below the maximum ends the walk
    assert all(p.grad is None for p in net.parameters())
    with pytest.raises(ValueError, match="threshold"):
        taylor_scores(den, net, prunable_units(net), x0, steps=2, thr=1.0)


def test_selection_meets_the_ratio_globally_and_per_block():
    units = [Unit("res", 0, g, 2 * g, 2 * g + 2) for g in range(4)] + [Unit("res", 1, g, g, g + 1) for g in range(4)]
    scores = [0.0, 5.0, 1.0, 7.0, 0.5, 0.6, 0.7, 9.0]
    chosen = select_global(units, scores, 0.5)  # budget 6 of 12 channels: the lowest scores while they fit
    assert chosen == [units[0], units[4], units[5], units[6]]  # 5 channels; the next (2 channels) would exceed 6
    per = select_per_block(units, scores, 0.5)
    assert sorted(u.name for u in per) == ["res0.g0", "res0.g2", "res1.g0", "res1.g1"]
    assert len(select_per_block(units, scores, 0.99)) == 6  # one group of each block is always kept


@pytest.mark.parametrize("ratio", [0.0, 1.0, -0.2, 1.5, float("nan")])
def test_ratios_outside_the_open_interval_are_refused(ratio):
    with pytest.raises(ValueError, match=r"strictly between 0 and 1"):
        check_ratio(ratio)
    with pytest.raises(ValueError, match=r"strictly between 0 and 1"):
        prune_denoiser(_den(_net()), torch.zeros(2, 1, 8, 8), ratio)


def test_models_without_prunable_blocks_are_refused():
    dit = build_net({"kind": "dit", "in_channels": 1, "resolution": 8})
    with pytest.raises(ValueError, match="supports fewstep UNet"):
        check_prunable(dit)
    net = _net()
    empty = prune_unet(net, prunable_units(net))
    assert all(h == 0 for h in empty.config.res_hidden)
    with pytest.raises(ValueError, match="no prunable blocks left"):
        prune_denoiser(_den(empty), torch.zeros(2, 1, 8, 8), 0.5)


def test_pruned_model_round_trips_through_save_and_load_and_fine_tunes(tmp_path):
    Trainer(tiny_config(steps=1), ImageData(tiny_images()), tmp_path / "run", progress=False).fit()
    source = str(latest_checkpoint(tmp_path / "run"))
    den = load_model(source)
    with torch.no_grad():
        for p in den.net.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    result = prune_denoiser(den, to_model_range(tiny_images(4)), 0.5, "taylor", steps=3)
    out = save_pruned(result, tmp_path / "pruned", source)
    back = load_model(out)
    assert back.config["network"] == result.denoiser.net.config.to_dict()
    assert back.config["pruning"]["method"] == "taylor" and back.config["pruning"]["removed"] == result.removed
    assert set(json.loads((out / "scores.json").read_text())) == {u.name for u in prunable_units(den.net)}
    with torch.no_grad():
        torch.testing.assert_close(back(X, T), result.denoiser(X, T))
    cfg = finetune_config(out, 2)
    assert cfg["network"] == back.config["network"] and cfg["objective"]["init_from"] == str(out.resolve())
    tr = Trainer(cfg, ImageData(tiny_images()), tmp_path / "ft", progress=False)
    with torch.no_grad():  # the warm start is the pruned model itself
        torch.testing.assert_close(tr.model(X, T), back.net(X, T))
    tr.fit()
    assert load_model(tmp_path / "ft").net.config.res_hidden == back.net.config.res_hidden
    kd = finetune_config(out, 2, teacher=source, teacher_weight=0.5)  # output distillation from the unpruned model
    assert kd["objective"]["teacher"] == source and kd["objective"]["teacher_weight"] == 0.5
    assert kd["training"]["precision"] == cfg["training"]["precision"]  # the source's, unless asked
    assert finetune_config(out, 2, precision="bf16")["training"]["precision"] == "bf16"
    tr = Trainer(kd, ImageData(tiny_images()), tmp_path / "kd", progress=False)
    with torch.no_grad():
        torch.testing.assert_close(tr.objective.teacher(X, T), load_model(source)(X, T))
    tr.fit()


def test_cli_prunes_and_fine_tunes_against_the_unpruned_model(tmp_path, capsys):
    import numpy as np

    from fewstep.cli import main

    Trainer(tiny_config(steps=1), ImageData(tiny_images()), tmp_path / "run", progress=False).fit()
    source = str(latest_checkpoint(tmp_path / "run"))
    np.savez(tmp_path / "data.npz", images=tiny_images(16).numpy())
    args = ["prune", "--model", source, "--ratio", "0.5", "--method", "taylor", "--steps", "3", "--images", "4",
            "--data", str(tmp_path / "data.npz"), "--out", str(tmp_path / "p"), "--finetune-steps", "2",
            "--distill", "--no-progress"]
    assert main(args) == 0
    cfg = json.loads((latest_checkpoint(tmp_path / "p") / "config.json").read_text())
    assert cfg["objective"]["teacher"] == source and cfg["objective"]["teacher_weight"] == 1.0
    assert "fine-tuned to step 2" in capsys.readouterr().out


def _counted_macs(net, shape):
    """Multiply-adds of every Conv2d / Linear of ``net`` and of its attention products, counted by hooks."""
    from fewstep.nets.unet import AttnBlock

    total = [0]

    def conv(mod, args, out):
        if isinstance(mod, torch.nn.Conv2d):
            total[0] += out[0].numel() * mod.in_channels * mod.kernel_size[0] * mod.kernel_size[1] // mod.groups
        else:
            total[0] += out.numel() * mod.in_features

    def attention(mod, args, out):
        n = args[0].shape[-2] * args[0].shape[-1]
        total[0] += 2 * n * n * args[0].shape[1]

    hooks = [m.register_forward_hook(conv) for m in net.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    hooks += [m.register_forward_hook(attention) for m in net.modules() if isinstance(m, AttnBlock)]
    with torch.no_grad():
        net(torch.zeros(1, *shape), torch.zeros(1))
    for h in hooks:
        h.remove()
    return total[0]


def test_unit_macs_are_what_the_rebuilt_network_saves():
    """Removing units saves exactly the sum of their counted multiply-adds (upsampling convolutions aside, which
    no unit touches): checked on the rebuilt smaller network for groups, a whole residual branch and attention."""
    from fewstep.pruning import unit_macs

    net = _net(4)
    units = prunable_units(net)
    macs = dict(zip((u.name for u in units), unit_macs(net, units, (1, 8, 8))))
    res0 = [u for u in units if u.kind == "res" and u.index == 0]
    for chosen in ([units[1], units[6]], res0, [u for u in units if u.kind == "attn"][:1]):
        small = prune_unet(net, chosen)
        saved = _counted_macs(net, (1, 8, 8)) - _counted_macs(small, (1, 8, 8))
        assert saved == sum(macs[u.name] for u in chosen), [u.name for u in chosen]


def test_a_macs_budget_ranks_by_score_per_multiply_add():
    units = [Unit("res", 0, g, 2 * g, 2 * g + 2) for g in range(3)]
    scores, costs = [1.0, 2.0, 3.0], [1.0, 10.0, 10.0]
    assert select_global(units, scores, 0.5) == [units[0]]  # channels: lowest score first, 2 of the 3 allowed
    # compute: 10.5 of 21 multiply-adds; per multiply-add the scores are 1.0, 0.2, 0.3
    assert select_global(units, scores, 0.5, costs) == [units[1]]
    assert select_global(units, scores, 0.99, costs) == [units[1], units[2]]
    with pytest.raises(ValueError, match="positive multiply-add"):
        select_global(units, scores, 0.5, [1.0, 0.0, 1.0])


def test_the_macs_budget_is_recorded_and_met():
    net = _net(5)
    den, x0 = _den(net), to_model_range(tiny_images(4))
    result = prune_denoiser(den, x0, 0.4, "ld", levels=1, budget="macs")
    assert result.details["budget"] == "macs" and 0 < result.details["macs_removed"] <= 0.4
    with pytest.raises(ValueError, match="budget"):
        prune_denoiser(den, x0, 0.4, "ld", budget="flops")
