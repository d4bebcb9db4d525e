"""Metrics: agreement with torchmetrics, sanity of FID / KID / precision-recall, statistics files."""

import numpy as np
import pytest
import torch
from torch import nn

from fewstep.metrics import FeatureStats, ModuleExtractor, frechet_distance, kernel_inception_distance, precision_recall
from fewstep.metrics.distributed import merge_all, shard
from fewstep.metrics.evaluate import compare, images_stats
from fewstep.metrics.inception_score import inception_score


class TinyFeatures(nn.Module):
    """A fixed random 8x8 -> 16 feature map (with a nonlinearity), in float64-friendly float32."""

    def __init__(self, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w = nn.Parameter(torch.randn(64, 16, generator=g) / 8, requires_grad=False)
        self.num_features = 16

    def forward(self, x):
        return torch.tanh(x.reshape(len(x), -1).float() @ self.w) + 0.1 * x.reshape(len(x), -1)[:, :16].float()


def _images(n, seed, shift=0.0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return (scale * torch.rand(n, 1, 8, 8, generator=g) * 2 - 1 + shift).clamp(-1, 1)


def _stats(module, images, **kw):
    ext = ModuleExtractor(module, "tiny", num_features=16)
    return images_stats(ext, images, batch_size=37, progress=False, **kw)


def test_fid_matches_torchmetrics():
    from torchmetrics.image.fid import FrechetInceptionDistance

    feat = TinyFeatures()
    real, fake = _images(300, 1), _images(300, 2, shift=0.2, scale=0.8)
    tm = FrechetInceptionDistance(feature=feat, normalize=True)
    tm.update(real, real=True)
    tm.update(fake, real=False)
    expected = float(tm.compute())
    ours = compare(_stats(feat, fake), _stats(feat, real), kid_subsets=1)["fid"]
    assert expected > 0.05
    assert abs(ours - expected) / expected < 1e-3


def test_kid_matches_torchmetrics():
    from torchmetrics.image.kid import KernelInceptionDistance

    feat = TinyFeatures()
    real, fake = _images(120, 3), _images(100, 4, shift=0.3)
    # One subset as large as the smaller set: the unbiased MMD is then independent of the subset order
    # on the smaller side, so torchmetrics' random subsets and ours must agree when both sets have 100.
    real = real[:100]
    tm = KernelInceptionDistance(feature=feat, subsets=2, subset_size=100, normalize=True)
    tm.update(real, real=True)
    tm.update(fake, real=False)
    expected, expected_std = (float(v) for v in tm.compute())
    with torch.no_grad():
        ours, ours_std = kernel_inception_distance(feat(real).numpy(), feat(fake).numpy(), subsets=2, subset_size=100)
    assert expected > 1e-3
    assert abs(ours - expected) / expected < 1e-3
    assert ours_std < 1e-9 and expected_std < 1e-6


def test_fid_self_zero_and_separated_large():
    feat = TinyFeatures()
    a = _stats(feat, _images(400, 5))
    b = _stats(feat, _images(400, 6))
    far = _stats(feat, _images(400, 7, shift=0.7, scale=0.3))
    assert abs(frechet_distance(a.mu, a.sigma, a.mu, a.sigma)) < 1e-8
    near = frechet_distance(a.mu, a.sigma, b.mu, b.sigma)
    assert frechet_distance(a.mu, a.sigma, far.mu, far.sigma) > 10 * near


def test_kid_self_near_zero_and_separated_positive():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(400, 8)), rng.normal(size=(400, 8))
    same, _ = kernel_inception_distance(x, y, subsets=10, subset_size=200)
    diff, _ = kernel_inception_distance(x, y + 1.0, subsets=10, subset_size=200)
    assert abs(same) < 0.02 and diff > 0.5


def test_precision_recall_two_gaussians():
    """Kynkaanniemi et al. 2019, fig. 1: truncation keeps precision, loses recall; a shift loses both."""
    rng = np.random.default_rng(0)
    real = rng.normal(size=(1000, 16))
    p, r = precision_recall(real, rng.normal(size=(1000, 16)))
    assert p > 0.6 and r > 0.6
    p_t, r_t = precision_recall(real, 0.4 * rng.normal(size=(1000, 16)))
    assert p_t > 0.95 and r_t < 0.2
    p_w, r_w = precision_recall(real, 2.0 * rng.normal(size=(1000, 16)))
    assert p_w < 0.2 and r_w > 0.9
    p_s, r_s = precision_recall(real, rng.normal(size=(1000, 16)) + 4.0)
    assert p_s < 0.05 and r_s < 0.05


def test_streaming_stats_equal_batch_moments_and_shards_merge():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(103, 5)) * 3 + 100  # a large mean: no cancellation in the streamed covariance
    whole = FeatureStats("e", "h", 5, max_features=50)
    for i in range(0, 103, 10):
        whole.update(x[i:i + 10])
    np.testing.assert_allclose(whole.mu, x.mean(0), rtol=1e-12)
    np.testing.assert_allclose(whole.sigma, np.cov(x, rowvar=False), rtol=1e-10)
    parts = []
    for rank in range(3):
        s = FeatureStats("e", "h", 5, max_features=50)
        for i in shard(range(103), rank, 3):
            s.update(x[i:i + 1])
        parts.append(s)
    merged = merge_all(parts)
    assert merged.n == 103
    np.testing.assert_allclose(merged.sigma, whole.sigma, rtol=1e-10)
    np.testing.assert_allclose(merged.features, whole.features)
    assert sorted(i for r in range(3) for i in shard(range(103), r, 3)) == list(range(103))


def test_stats_round_trip_and_mismatch_refused(tmp_path):
    stats = _stats(TinyFeatures(0), _images(50, 8))
    stats.save(tmp_path / "ref.npz")
    back = FeatureStats.load(tmp_path / "ref.npz")
    assert (back.extractor, back.fingerprint, back.n) == ("tiny", stats.fingerprint, 50)
    np.testing.assert_array_equal(back.mu, stats.mu)
    np.testing.assert_allclose(back.sigma, stats.sigma, rtol=1e-14)
    np.testing.assert_array_equal(back.features, stats.features)
    with np.load(tmp_path / "ref.npz") as z:  # pytorch-fid reads exactly these two arrays
        assert z["mu"].shape == (16,) and z["sigma"].shape == (16, 16)
    assert compare(back, stats)["fid"] == pytest.approx(0, abs=1e-8)
    other = _stats(TinyFeatures(1), _images(50, 8))  # same name and size, different weights
    with pytest.raises(ValueError, match="different feature extractors"):
        compare(other, back)
    np.savez(tmp_path / "pytorch_fid.npz", mu=stats.mu, sigma=stats.sigma)
    with pytest.raises(ValueError, match="fewstep stats"):
        compare(stats, FeatureStats.load(tmp_path / "pytorch_fid.npz"))
    with pytest.raises(FileNotFoundError, match="fewstep stats"):
        FeatureStats.load(tmp_path / "missing.npz")


def test_bad_features_rejected():
    s = FeatureStats("e", "h", 4)
    with pytest.raises(ValueError, match=r"\(batch, 4\)"):
        s.update(np.zeros((3, 5)))
    with pytest.raises(ValueError, match="NaN"):
        s.update(np.full((3, 4), np.nan))


def test_inception_score_bounds():
    uniform = np.zeros((100, 10))
    assert inception_score(uniform)[0] == pytest.approx(1.0)
    confident = np.eye(10)[np.arange(100) % 10] * 50
    assert inception_score(confident, splits=5)[0] == pytest.approx(10.0, rel=1e-6)


def test_paired_fd_difference_of_a_sampler_with_itself_is_exactly_zero():
    from fewstep.metrics.frechet import paired_fd_difference

    g = torch.Generator().manual_seed(0)
    f = torch.randn(300, 4, generator=g, dtype=torch.float64)
    assert paired_fd_difference(f, f.clone(), torch.zeros(4), torch.eye(4), resamples=50) == (0.0, 0.0, 0.0)


def test_paired_fd_difference_resolves_what_unpaired_intervals_cannot():
    """b = a plus a small extra spread on the same seeds: FD(a) - FD(b) is negative, and pairing the rows makes
    the interval exclude 0 though each FD's own sampling noise is larger than the difference."""
    from fewstep.metrics.frechet import frechet_distance, paired_fd_difference

    g = torch.Generator().manual_seed(1)
    a = torch.randn(400, 3, generator=g, dtype=torch.float64)
    b = a * 1.15
    diff, lo, hi = paired_fd_difference(a, b, torch.zeros(3), torch.eye(3), resamples=200)
    direct = (frechet_distance(a.mean(0).numpy(), torch.cov(a.T).numpy(), np.zeros(3), np.eye(3))
              - frechet_distance(b.mean(0).numpy(), torch.cov(b.T).numpy(), np.zeros(3), np.eye(3)))
    assert diff == pytest.approx(direct)
    assert lo <= diff <= hi < 0
    own = []                                                       # FD(b) alone, resampled: its spread
    for _ in range(200):
        idx = torch.randint(0, 400, (400,), generator=g)
        own.append(frechet_distance(b[idx].mean(0).numpy(), torch.cov(b[idx].T).numpy(), np.zeros(3), np.eye(3)))
    own_lo, own_hi = np.quantile(own, [0.025, 0.975])
    assert own_hi - own_lo > abs(diff) > hi - lo                   # unpaired: not resolved; paired: resolved


def test_paired_fd_difference_refuses_unpaired_shapes():
    from fewstep.metrics.frechet import paired_fd_difference

    with pytest.raises(ValueError, match="one shape"):
        paired_fd_difference(torch.zeros(10, 3), torch.zeros(9, 3), torch.zeros(3), torch.eye(3))
