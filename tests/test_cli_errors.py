"""Every error the CLI reports is one line without a traceback; ``--debug`` still raises."""

import shutil

import pytest

import fewstep.commands.solvers
from fewstep.cli import error_message, main


def _one_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err.strip()


@pytest.mark.parametrize("err, text", [
    (ValueError("bad value\n  on two lines"), "bad value on two lines"),
    (FileNotFoundError("model x not found"), "model x not found"),
    (KeyError("network"), "missing entry 'network' (rerun with --debug for the traceback)"),
    (ModuleNotFoundError("No module named 'diffusers'", name="diffusers"),
     "a missing dependency: No module named 'diffusers' (pip install 'fewstep[diffusers]')"),
    (NotImplementedError(), "not implemented"),
    (NotImplementedError("fp16 on CPU"), "not implemented: fp16 on CPU"),
    (ZeroDivisionError("division by zero"),
     "ZeroDivisionError: division by zero (unexpected; rerun with --debug for the traceback)"),
])
def test_error_messages(err, text):
    assert error_message(err) == text


@pytest.mark.parametrize("exc", [KeyError("solver"), ImportError("cannot import name 'x'"), AttributeError("y"),
                                 NotImplementedError(), IndexError("list index out of range")])
def test_any_exception_is_one_line_and_debug_raises(exc, capsys, monkeypatch):
    def boom(args):
        raise exc

    monkeypatch.setattr(fewstep.commands.solvers, "_run", boom)
    assert main(["solvers"]) == 1
    assert _one_line(capsys).startswith("fewstep solvers: error: ")
    with pytest.raises(type(exc)):
        main(["solvers", "--debug"])


def test_safetensors_errors_say_which_kind_of_file():
    from safetensors import SafetensorError

    assert error_message(SafetensorError("Error while deserializing header: HeaderTooSmall")) == (
        "cannot read a .safetensors weights file (Error while deserializing header: HeaderTooSmall); "
        "is it complete?")


def test_truncated_weights_are_one_line(tmp_path, capsys):
    from fewstep.loading import resolve_bundled

    model = tmp_path / "model"
    shutil.copytree(resolve_bundled("bundled:fashion"), model)
    weights = model / "ema.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    assert main(["sample", "--model", str(model), "--n", "1", "--nfe", "1", "--out", str(tmp_path / "g.png")]) == 1
    assert "ema.safetensors" in _one_line(capsys)
    assert not (tmp_path / "g.png").exists()


def test_missing_model_is_one_line(tmp_path, capsys):
    assert main(["sample", "--model", str(tmp_path / "nope"), "--out", str(tmp_path / "g.png")]) == 1
    assert "not found" in _one_line(capsys)
