"""multiLID detection (fewstep.detect): the LID estimator on data of known dimension, the forest export, the
fit/score round trip and its refusals."""

import json

import numpy as np
import pytest
import torch

from fewstep.cli import main
from fewstep.detect import detection_metrics, fit_detector, knn_distances, lid_mle, lid_terms, load_detector, roc_auc
from fewstep.detect.forest import fit_forest, forest_proba

sklearn = pytest.importorskip("sklearn")


@pytest.mark.parametrize("d", [2, 4, 8])
def test_lid_of_points_on_a_subspace_is_its_dimension(d):
    """Gaussian points on a d-dimensional linear subspace of R^40: the MLE LID is d (Levina & Bickel 2004)."""
    g = torch.Generator().manual_seed(d)
    basis = torch.linalg.qr(torch.randn(40, 40, generator=g))[0][:d]
    z = torch.randn(3000, d, generator=g) @ basis
    lid = lid_mle(knn_distances(z, z, 20, exclude_self=True))
    assert abs(lid.median().item() - d) < 0.12 * d
    # the same number of points filling a 2d-dimensional subspace reads about twice as high
    z2 = torch.randn(3000, 2 * d, generator=g) @ torch.linalg.qr(torch.randn(40, 40, generator=g))[0][:2 * d]
    assert lid_mle(knn_distances(z2, z2, 20, exclude_self=True)).median() > 1.6 * d


def test_lid_terms_and_mle_on_known_distances():
    r = torch.tensor([[1.0, 2.0, 4.0]])
    assert torch.allclose(lid_terms(r), torch.log(torch.tensor([[4.0, 2.0, 1.0]])))
    # (k-1) / sum_{i<k} log(r_k/r_i) = 2 / (log 4 + log 2)
    assert lid_mle(r).item() == pytest.approx(2 / np.log(8))
    # exact duplicates of reference points give finite terms
    assert torch.isfinite(lid_terms(torch.tensor([[0.0, 1.0, 2.0]]))).all()


def test_knn_distances_refuse_bad_k():
    x = torch.randn(5, 3)
    with pytest.raises(ValueError, match="k = 5"):
        knn_distances(x, x, 5, exclude_self=True)
    with pytest.raises(ValueError, match="same D"):
        knn_distances(x, torch.randn(5, 4), 2)


def test_forest_arrays_match_sklearn():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 6))
    y = (x[:, 0] + 0.5 * x[:, 1] ** 2 + 0.3 * rng.normal(size=300) > 0.5).astype(int)
    forest = fit_forest(x, y, trees=7, seed=3)
    from sklearn.ensemble import RandomForestClassifier

    rf = RandomForestClassifier(n_estimators=7, random_state=3, n_jobs=1).fit(x, y)
    xt = rng.normal(size=(200, 6))
    assert np.allclose(forest_proba(forest, xt), rf.predict_proba(xt)[:, 1])


def test_roc_auc_matches_sklearn_with_ties():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(1)
    s = rng.integers(0, 5, 200) / 4.0
    y = rng.integers(0, 2, 200)
    assert roc_auc(s, y) == pytest.approx(roc_auc_score(y, s))
    assert detection_metrics(np.array([0.1, 0.9, 0.6, 0.4]), np.array([0, 1, 0, 1]))["accuracy"] == 0.5


def _images(n, seed, real):
    """Tiny separable case: real images lie on a 2-dimensional family (mixtures of two fixed patterns), generated
    ones are those plus full-dimensional pixel noise, off the family: their neighbours are all about equally far."""
    g = torch.Generator().manual_seed(seed)
    patterns = torch.randn(2, 1, 12, 12, generator=torch.Generator().manual_seed(99)) * 0.4
    x = torch.einsum("nk,kchw->nchw", torch.rand(n, 2, generator=g) * 2 - 1, patterns)
    if not real:
        x = x + 0.5 * torch.randn(n, 1, 12, 12, generator=g)
    return x.clamp(-1, 1)


def test_fit_score_round_trip_separates_and_survives_saving(tmp_path):
    ref, real, fake = _images(40, 0, True), _images(60, 1, True), _images(60, 2, False)
    det = fit_detector(real, fake, ref, k=5, trees=20, seed=0)
    det.save(tmp_path / "det")
    loaded = load_detector(tmp_path / "det")
    real_t, fake_t = _images(50, 3, True), _images(50, 4, False)
    p = loaded.proba(torch.cat([real_t, fake_t]))
    assert np.array_equal(p, det.proba(torch.cat([real_t, fake_t])))
    m = detection_metrics(p, np.r_[np.zeros(50), np.ones(50)])
    assert m["accuracy"] > 0.95 and m["auc"] > 0.99
    # same image, same score in any batch
    assert np.allclose(loaded.proba(fake_t[:7], batch_size=3), p[50:57])


def test_detector_refuses_images_of_another_size(tmp_path):
    det = fit_detector(_images(30, 1, True), _images(30, 2, False), _images(20, 0, True), k=5, trees=5)
    with pytest.raises(ValueError, match=r"fitted on 1x12x12 .* are 1x16x16"):
        det.proba(torch.zeros(4, 1, 16, 16))
    with pytest.raises(ValueError, match=r"are 3x12x12"):
        det.proba(torch.zeros(4, 3, 12, 12))


def test_cli_fit_and_score(tmp_path, capsys):
    real = torch.cat([_images(30, 0, True), _images(80, 1, True)])
    fake = _images(110, 2, False)
    for name, x in (("real", real), ("fake", fake)):
        np.savez(tmp_path / f"{name}.npz", images=((x + 1) * 127.5).round().to(torch.uint8).numpy())
    small = tmp_path / "small.npz"
    np.savez(small, images=np.zeros((10, 1, 16, 16), np.uint8))
    r, f, d = str(tmp_path / "real.npz"), str(tmp_path / "fake.npz"), str(tmp_path / "det")
    assert main(["detect", "fit", "--real", r, "--fake", f, "--out", d, "--n", "40", "--reference", "30", "--k",
                 "5", "--trees", "20", "--no-progress"]) == 0
    js = str(tmp_path / "s.json")
    assert main(["detect", "score", "--detector", d, "--real", r, "--fake", f, "--start", "70", "--fake-start", "50",
                 "--n", "40", "--json", js, "--no-progress"]) == 0
    out = json.loads(open(js).read())
    assert out["n_real"] == out["n_fake"] == 40 and out["accuracy"] > 0.9 and out["auc"] > 0.95
    assert "AUC" in capsys.readouterr().out
    # images it was fitted on are refused, and so are images of another size
    assert main(["detect", "score", "--detector", d, "--fake", f, "--start", "0", "--n", "40", "--no-progress"]) != 0
    assert "overlaps the fake images" in capsys.readouterr().err
    assert main(["detect", "score", "--detector", d, "--images", str(small), "--no-progress"]) != 0
    assert "fitted on 1x12x12" in capsys.readouterr().err


def test_minibatch_features_read_the_batch_dimension():
    """The paper's protocol: neighbours within the minibatch.  Images spanned by 3 fixed patterns: the pixel
    layer's unfolded terms give LID ~ 3 (the first layer, 'pixels', is the input itself)."""
    from fewstep.detect.detector import minibatch_multilid_features
    from fewstep.detect.network import LIDNet

    g = torch.Generator().manual_seed(0)
    patterns = torch.randn(3, 1, 12, 12, generator=g) * 0.3
    x = torch.einsum("nk,kchw->nchw", torch.randn(400, 3, generator=g) * 0.5, patterns).clamp(-1, 1)
    f = minibatch_multilid_features(LIDNet(1, 8, 0), x, 20, batch_size=400)
    assert f.shape == (400, 5 * 20)
    terms = torch.from_numpy(f[:, :20])  # pixels layer
    lid = (19 / terms[:, :-1].sum(1)).median().item()
    assert 2.4 < lid < 3.6
