"""DDP with 2 gloo processes gives the same update as one process with the summed batch."""

import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from conftest import tiny_config, tiny_images
from fewstep.data import ImageData
from fewstep.training.trainer import Trainer


def _worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        tr = Trainer(tiny_config(grad_accum=2), ImageData(tiny_images()), out_dir, device="cpu", progress=False)
        loss = tr.accumulate_gradients()
        grads = {n: p.grad.clone() for n, p in tr.model.named_parameters()}
        tr.step = 0
        tr.fit(steps=2)
        if rank == 0:
            torch.save({"loss": loss, "grads": grads, "losses": tr.losses,
                        "params": {n: p.detach().clone() for n, p in tr.model.named_parameters()}},
                       os.path.join(out_dir, "ddp.pt"))
    finally:
        dist.barrier()  # no rank tears the group down while another is still in a collective
        dist.destroy_process_group()


def test_ddp_two_gloo_processes_match_one_process(tmp_path):
    out = tmp_path / "ddp"
    out.mkdir()
    # spawn, not fork: a forked child inherits the parent's OpenMP thread pool and can deadlock in it.
    mp.start_processes(_worker, args=(2, str(tmp_path / "init"), str(out)), nprocs=2, join=True, start_method="spawn")
    ddp = torch.load(out / "ddp.pt", weights_only=True)
    single = Trainer(tiny_config(), ImageData(tiny_images()), tmp_path / "single", progress=False)
    loss = single.accumulate_gradients()
    assert abs(loss - ddp["loss"]) < 1e-6
    for name, p in single.model.named_parameters():
        assert torch.allclose(p.grad, ddp["grads"][name], rtol=1e-4, atol=1e-7), name
    single.fit(steps=2)
    assert single.losses[0] == ddp["losses"][0] or abs(single.losses[0] - ddp["losses"][0]) < 1e-6
    for name, p in single.model.named_parameters():
        assert torch.allclose(p, ddp["params"][name], atol=1e-4), name
