"""Train fewstep's dataset-native feature extractor on the Fashion-MNIST training set.

    PYTHONPATH=src python benchmarks/train_fashion_classifier.py --out src/fewstep/assets/fashion_classifier

Adam, batch 128, random horizontal flips and +-2 pixel shifts; reports the test-set accuracy
and writes ``fashion_classifier.safetensors`` with a provenance JSON (accuracy, recipe, SHA-256).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from fewstep._io import atomic_write_text
from fewstep.metrics.data import fashion_mnist
from fewstep.metrics.fashion_classifier import CONFIG, NAME, WEIGHTS, FashionNet
from fewstep.metrics.features import sha256_file


def augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    flip = torch.rand(len(x), generator=g) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    dx, dy = (int(v) for v in torch.randint(-2, 3, (2,), generator=g))
    return torch.roll(F.pad(x, (2, 2, 2, 2), value=-1.0), (dy, dx), (2, 3))[:, :, 2:30, 2:30]


@torch.no_grad()
def accuracy(net: FashionNet, x: torch.Tensor, y: torch.Tensor) -> float:
    net.eval()
    correct = sum(int((net(x[i:i + 1000]).argmax(1) == y[i:i + 1000]).sum()) for i in range(0, len(x), 1000))
    return correct / len(x)


@torch.no_grad()
def calibrate(net: FashionNet, x: torch.Tensor) -> None:
    """Set the feature standardisation buffers to the mean and std of the training set's features."""
    net.eval()
    h = torch.cat([net.hidden(x[i:i + 1000]) for i in range(0, len(x), 1000)]).double()
    net.feature_mean.copy_(h.mean(0))
    net.feature_scale.copy_(h.std(0).clamp(min=1e-6))


def save(net: FashionNet, out: Path, meta: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".{WEIGHTS}.tmp"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(tmp))
    tmp.replace(out / WEIGHTS)
    meta = {**meta, "sha256": sha256_file(out / WEIGHTS)}
    atomic_write_text(out / CONFIG, json.dumps(meta, indent=2) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    ap.add_argument("--out", default="src/fewstep/assets/fashion_classifier")
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--recalibrate", action="store_true",
                    help="only recompute the feature standardisation of the weights already in --out")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    g = torch.Generator().manual_seed(args.seed)
    xtr, ytr = fashion_mnist("train")
    xte, yte = fashion_mnist("test")
    out = Path(args.out)
    if args.recalibrate:
        from safetensors.torch import load_file

        meta = json.loads((out / CONFIG).read_text())
        net = FashionNet(**meta["arch"])
        state = load_file(str(out / WEIGHTS))
        net.load_state_dict({**net.state_dict(), **state})
        calibrate(net, xtr)
        meta["features"] = "128-d penultimate pre-activations, standardised with the training set's mean and std"
        save(net, out, meta)
        print(f"recalibrated {out / WEIGHTS}; test accuracy {accuracy(net, xte, yte):.4f}")
        return
    net = FashionNet()
    opt = torch.optim.Adam(net.parameters(), lr=args.lr)
    steps = args.epochs * (len(xtr) // 128)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, args.lr, total_steps=steps)
    t0 = time.time()
    for epoch in range(args.epochs):
        net.train()
        perm = torch.randperm(len(xtr), generator=g)
        for i in range(len(xtr) // 128):
            idx = perm[i * 128:(i + 1) * 128]
            loss = F.cross_entropy(net(augment(xtr[idx], g)), ytr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        print(f"epoch {epoch + 1}: loss {loss.item():.3f}, test accuracy {accuracy(net, xte, yte):.4f}, "
              f"{time.time() - t0:.0f}s", flush=True)
    acc = accuracy(net, xte, yte)
    calibrate(net, xtr)
    meta = {"name": NAME, "arch": {"width": 16, "features": 128, "classes": 10},
            "test_accuracy": round(acc, 4), "train_set": "Fashion-MNIST train (60000)",
            "test_set": "Fashion-MNIST t10k (10000)",
            "recipe": {"optimizer": "Adam + OneCycle", "lr": args.lr, "batch": 128, "epochs": args.epochs,
                       "augmentation": "hflip, +-2px shifts", "seed": args.seed},
            "input": "(B, 1, 28, 28) in [-1, 1]",
            "features": "128-d penultimate pre-activations, standardised with the training set's mean and std"}
    save(net, out, meta)
    print(f"test accuracy {acc:.4f}; wrote {out / WEIGHTS}")


if __name__ == "__main__":
    main()
