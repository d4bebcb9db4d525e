"""One option-spec base (fewstep.options.OptionSpec) for solvers and restoration methods."""

import math

import pytest

from fewstep import solvers
from fewstep.options import Interval, OptionSpec
from fewstep.restoration.methods import get_method


def test_solvers_and_restoration_methods_read_and_check_options_alike():
    ddim, dps = solvers.get("ddim"), get_method("dps")
    assert isinstance(ddim, OptionSpec) and isinstance(dps, OptionSpec)
    assert ddim.options == {"eta": 0.0} and dps.options == {"zeta": 1.0}  # keyword-only, plumbing left out
    for spec, bad, good in ((ddim, "etaa", "eta"), (dps, "zetta", "zeta")):
        with pytest.raises(ValueError) as err:
            spec.check_options({bad: 1})
        assert str(err.value) == (f"{spec.kind} {spec.name!r} has no option {bad!r} (did you mean {good!r}?); "
                                  f"its options: {good}={spec.options[good]}.")
        spec.check_options({good: 0.5})
    # declared ranges, one check and one message for both kinds
    assert isinstance(ddim.ranges["eta"], Interval) and dps.ranges["zeta"] == Interval(0, math.inf, True, False)
    for spec, name, bad, valid in ((ddim, "eta", 2.0, "0 <= eta <= 1"), (dps, "zeta", -1.0, "zeta >= 0")):
        with pytest.raises(ValueError) as err:
            spec.check_options({name: bad})
        assert str(err.value) == f"{spec.kind} {spec.name!r}: {name}={bad!r} is out of range; valid: {valid}"


def test_restore_refuses_a_repaint_plan_it_cannot_spend_before_planning():
    """jump=0 used to reach RePaint's NFE plan (a division by zero); the declared range refuses it first."""
    from fewstep.restoration import restore_nfe

    with pytest.raises(ValueError, match=r"restoration method 'repaint': jump=0 is out of range; valid: jump >= 1"):
        restore_nfe("repaint", 10, jump=0)
    assert restore_nfe("repaint", 10, jump=2, resample=2) <= 10


def test_planned_options_are_refused_only_where_the_nfe_is_fixed():
    heun = solvers.get("heun")
    assert "heun_steps" in heun.fixed_options and "heun_steps" not in heun.settable_options()
    with pytest.raises(ValueError, match="'heun_steps' of solver 'heun' is set from nfe"):
        heun.check_options({"heun_steps": 1})
    adaptive = solvers.get("dpm_adaptive")
    assert not adaptive.fixed_options and set(adaptive.settable_options()) == set(adaptive.options)
