"""``fewstep.devices.resolve_device`` and the commands' ``--device``: one clear error, before any work."""

import pytest
import torch

from fewstep.cli import main
from fewstep.devices import resolve_device


@pytest.fixture
def cpu_build(monkeypatch):
    """A CPU-only PyTorch build, whatever this machine has."""
    monkeypatch.setattr(torch.version, "cuda", None)
    monkeypatch.setattr(torch.version, "hip", None, raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)


@pytest.fixture
def two_gpus(monkeypatch):
    monkeypatch.setattr(torch.version, "cuda", "12.4")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)


def test_default_and_cpu(cpu_build):
    assert resolve_device(None) == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("cpu") == resolve_device(" CPU ") == torch.device("cpu")


def test_cuda_on_a_cpu_build(cpu_build):
    for spec in ["cuda", "cuda:3"]:
        with pytest.raises(ValueError, match=rf"--device {spec}: this PyTorch build has no CUDA \(torch .*\); "
                                             r"use --device cpu"):
            resolve_device(spec)


def test_cuda_build_without_a_gpu(monkeypatch):
    monkeypatch.setattr(torch.version, "cuda", "12.4")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="no CUDA GPU is usable.*use --device cpu"):
        resolve_device("cuda")


def test_cuda_index_out_of_range(two_gpus):
    assert resolve_device(None) == torch.device("cuda")
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(ValueError, match=r"--device cuda:3: this machine has 2 CUDA devices \(cuda:0..cuda:1\)"):
        resolve_device("cuda:3")


@pytest.mark.parametrize("spec, message", [("gpu", "not a device name; use cpu, cuda"),
                                           ("cuda:x", "not a device name"),
                                           ("meta", "fewstep runs on cpu, cuda"),
                                           ])
def test_malformed_names(spec, message):
    with pytest.raises(ValueError, match=f"--device {spec}: {message}"):
        resolve_device(spec)


def test_mps_unavailable(monkeypatch):
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(ValueError, match="--device mps: mps is not available.*use --device cpu"):
        resolve_device("mps")


@pytest.mark.parametrize("argv", [
    ["sample", "--model", "bundled:fashion", "--out", "{tmp}/g.png"],
    ["train", "--config", "fashion-unet", "--data", "{tmp}/missing.npz", "--out", "{tmp}/run"],
    ["eval", "--n", "10"],
    ["stats", "--data", "fashion-mnist:test", "--out", "{tmp}/ref.npz"],
    ["bench", "model", "--n", "10", "--out", "{tmp}/bench"],
])
def test_every_command_refuses_a_missing_device_in_one_line(argv, tmp_path, capsys, cpu_build, monkeypatch):
    """The device is checked first: before the model, the data (train's is missing) or any output."""
    monkeypatch.setattr("fewstep.loading.load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert main(argv + ["--device", "cuda"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--device cuda: this PyTorch build has no CUDA" in err
    assert list(tmp_path.iterdir()) == []
