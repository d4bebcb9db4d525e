"""Feature extractors: FID Inception architecture and weight handling, the shipped Fashion-MNIST classifier."""

import json

import pytest
import torch

from fewstep.metrics.extractors import get_extractor
from fewstep.metrics.features import ModuleExtractor, state_dict_hash
from fewstep.metrics.inception import ENV_VAR, WEIGHTS_NAME, FIDInceptionV3, InceptionExtractor, find_inception_weights


@pytest.fixture(scope="module")
def inception_file(tmp_path_factory):
    torch.manual_seed(0)
    net = FIDInceptionV3()
    state = {k: v for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    path = tmp_path_factory.mktemp("inc") / WEIGHTS_NAME
    torch.save(state, path)
    return path, net


def test_inception_architecture_and_weight_file(inception_file):
    path, net = inception_file
    # pytorch-fid's port: torchvision's Inception-v3 without the auxiliary head, 1008 classes.
    assert sum(p.numel() for p in net.parameters()) == 23_850_960
    assert {"Mixed_7c.branch_pool.conv.weight", "Conv2d_1a_3x3.bn.running_var", "fc.weight"} <= set(net.state_dict())
    ext = InceptionExtractor(path)
    ref = InceptionExtractor(net=net)
    x = torch.rand(2, 1, 28, 28) * 2 - 1
    with torch.no_grad():
        feats = ext(x)
        assert feats.shape == (2, 2048) and (feats >= 0).all()  # pool3 averages ReLU outputs
        torch.testing.assert_close(feats, ref(x))
        assert ext.logits(x).shape == (2, 1008)
    assert ext.name == "inception-v3-fid-pool3" and len(ext.fingerprint()) == 64


def test_inception_rejects_wrong_file(tmp_path):
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match=WEIGHTS_NAME):
        InceptionExtractor(tmp_path / "bad.pth")


def test_missing_inception_weights_say_what_and_where(tmp_path, monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    assert find_inception_weights(required=False) is None
    with pytest.raises(FileNotFoundError) as err:
        find_inception_weights()
    assert WEIGHTS_NAME in str(err.value) and "--inception PATH" in str(err.value) and ENV_VAR in str(err.value)
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "nowhere.pth"))
    with pytest.raises(FileNotFoundError, match=ENV_VAR):
        find_inception_weights()
    # "auto" falls back to the shipped dataset-native extractor when no Inception weights exist
    monkeypatch.delenv(ENV_VAR)
    assert get_extractor("auto").name == "fashion-classifier-v1"


def test_shipped_fashion_classifier():
    from fewstep.metrics.fashion_classifier import CONFIG, asset_dir

    ext = get_extractor("fashion")
    meta = json.loads((asset_dir() / CONFIG).read_text())
    assert meta["test_accuracy"] > 0.88 and ext.fingerprint() == meta["sha256"]
    x = torch.rand(3, 1, 28, 28) * 2 - 1
    with torch.no_grad():
        assert ext(x).shape == (3, 128) and ext.logits(x).shape == (3, 10)
    with pytest.raises(ValueError, match="inception"):
        ext(torch.zeros(1, 3, 32, 32))


def test_any_module_plugs_in():
    mod = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 5))
    ext = ModuleExtractor(mod, sample_shape=(1, 4, 4))
    assert ext.num_features == 5 and ext.fingerprint() == state_dict_hash(mod)
    assert ext(torch.zeros(2, 1, 4, 4)).shape == (2, 5)
