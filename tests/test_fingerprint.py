"""One model fingerprint (fewstep.fingerprint) and one walk over wrapper chains (fewstep.denoisers.wrapper_chain)."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

import fewstep
from fewstep.denoisers import ClassifierFreeGuidance, NFECounter, find_attached, innermost, wrapper_chain
from fewstep.fingerprint import model_fingerprint
from fewstep.solvers.dpm_v3 import EMS, EMSMismatch

from conftest import fashion_standin


def test_wrapper_chain_walks_outermost_first():
    den = fashion_standin()
    guided = ClassifierFreeGuidance(NFECounter(den), 2.0, {"class_labels": 10})
    chain = list(wrapper_chain(guided))
    assert [type(d) for d in chain] == [ClassifierFreeGuidance, NFECounter, fewstep.Denoiser]
    assert innermost(guided) is den and innermost(den) is den
    den.data_gaussian = "g"
    assert find_attached(guided, "data_gaussian") == "g" and find_attached(guided, "ems") is None


def test_fingerprint_is_stable_and_follows_the_weights():
    a, b = fashion_standin(), fashion_standin()
    fp = model_fingerprint(a)
    assert len(fp) == 64 and model_fingerprint(b) == fp  # same weights, another object
    assert model_fingerprint(NFECounter(a)) == fp  # counting is transparent
    a.ems, a.data_gaussian = "statistics", "gaussian"  # data attached for the samplers is not the model
    assert model_fingerprint(a) == fp
    with torch.no_grad():  # an in-place update of the same tensor (the remembered digest must not go stale)
        a.net.conv.weight[0, 0, 0, 0] += 1e-3
    changed = model_fingerprint(a)
    assert changed != fp
    a.net.load_state_dict(b.net.state_dict())
    assert model_fingerprint(a) == fp
    a.net.conv.bias = torch.nn.Parameter(a.net.conv.bias + 1)  # a replaced tensor
    assert model_fingerprint(a) != fp
    # a wrapper that changes what is computed changes it; so does the prediction type
    assert model_fingerprint(ClassifierFreeGuidance(b, 2.0, {})) != fp
    assert model_fingerprint(fewstep.Denoiser(b.net, b.process, "x0", sample_shape=(1, 28, 28))) != fp


def test_fingerprint_is_the_same_in_another_process():
    code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); from conftest import fashion_standin; "
            "from fewstep.fingerprint import model_fingerprint; print(model_fingerprint(fashion_standin()))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == model_fingerprint(fashion_standin())


def test_ems_belongs_to_the_model_under_any_wrapper():
    den = fashion_standin()
    lam = torch.linspace(-5, 5, 4, dtype=torch.float64)
    ems = EMS.degenerate(lam, (1, 28, 28))
    ems.meta = {"process": den.process.config(), "fingerprint": model_fingerprint(den)}
    ems.check(ClassifierFreeGuidance(NFECounter(den), 3.0, {}))  # the model's statistics, checked through wrappers
    other = fashion_standin()
    with torch.no_grad():
        other.net.conv.bias += 0.01
    with pytest.raises(EMSMismatch, match="another model"):
        ems.check(other)
