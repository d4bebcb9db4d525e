"""Test-split accuracy of a REPA encoder trained with ``fewstep train --config fashion-encoder``.

    python benchmarks/encoder_accuracy.py runs/encoder

The encoder trains on the training split only; the test split is used here to report how good its
features are, never for training.
"""

from __future__ import annotations

import argparse

import torch

from fewstep.data import load_fashion_mnist, to_model_range
from fewstep.training import load_encoder


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("encoder")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    enc = load_encoder(args.encoder)
    data = load_fashion_mnist(split="test")
    assert data.labels is not None
    correct = 0
    with torch.inference_mode():
        for i in range(0, len(data), 500):
            logits = enc(to_model_range(data.images[i:i + 500]))
            correct += int((logits.argmax(dim=1) == data.labels[i:i + 500]).sum())
    print(f"test accuracy {correct / len(data):.4f} ({correct}/{len(data)})")


if __name__ == "__main__":
    main()
