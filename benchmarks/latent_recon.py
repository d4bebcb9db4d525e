"""The floor of a latent model: FID of the autoencoder's reconstructions of the Fashion-MNIST test set.

    PYTHONPATH=src python benchmarks/latent_recon.py --autoencoder runs/autoencoder [--n 10000]

A latent model's samples are decoded by ``D``, so its FID cannot be better than that of ``D(E(x))`` on real images
(the "rFID" latent-diffusion papers report beside their generative FID).  Prints FID (dataset-native ``fashion``
extractor, against the shipped test-set statistics) of the first ``--n`` test images reconstructed, the same
images' own FID (the sampling floor of n images, not zero), and the reconstructions' RMSE in [-1, 1].
"""

from __future__ import annotations

import argparse
import json

import torch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--autoencoder", required=True, help="a run or checkpoint of fewstep train --config fashion-autoencoder")
    p.add_argument("--n", type=int, default=10000)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    from fewstep.metrics.data import fashion_mnist
    from fewstep.metrics.evaluate import evaluate
    from fewstep.metrics.extractors import get_extractor
    from fewstep.metrics.models import reference_stats
    from fewstep.training.autoencoder import load_autoencoder

    images, _ = fashion_mnist("test")  # in [-1, 1]
    if args.n > len(images):
        raise SystemExit(f"--n {args.n} is more than the {len(images)} test images")
    ae = load_autoencoder(args.autoencoder)
    extractor = get_extractor("fashion")
    ref = reference_stats(None, extractor)

    def reconstructions(seeds: list[int]) -> torch.Tensor:
        with torch.no_grad():
            return ae(images[seeds]).clamp(-1, 1)

    def originals(seeds: list[int]) -> torch.Tensor:
        return images[seeds]

    recon = evaluate(reconstructions, args.n, extractor, ref, progress=False)
    real = evaluate(originals, args.n, extractor, ref, progress=False)
    with torch.no_grad():
        rmse = float((ae(images[:args.n]).clamp(-1, 1) - images[:args.n]).pow(2).mean().sqrt())
    print(json.dumps({"n": args.n, "recon_fid": round(recon["fid"], 3), "real_fid": round(real["fid"], 3),
                      "recon_rmse": round(rmse, 4), "latent_shape": list(ae.config.latent_shape)}))


if __name__ == "__main__":
    main()
