"""One option-spec base (fewstep.options.OptionSpec) for solvers and restoration methods."""

import pytest

from fewstep import solvers
from fewstep.options import OptionSpec
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
    assert ddim.ranges == {} and dps.ranges == {}  # declared ranges: none yet


def test_planned_options_are_refused_only_where_the_nfe_is_fixed():
    heun = solvers.get("heun")
    assert "heun_steps" in heun.fixed_options and "heun_steps" not in heun.settable_options()
    with pytest.raises(ValueError, match="'heun_steps' of solver 'heun' is set from nfe"):
        heun.check_options({"heun_steps": 1})
    adaptive = solvers.get("dpm_adaptive")
    assert not adaptive.fixed_options and set(adaptive.settable_options()) == set(adaptive.options)
