"""Sharded evaluation under torchrun (2 CPU processes, gloo) equals the single-process result."""

import os
import runpy
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import fewstep
from fewstep.metrics import FeatureStats

SCRIPT = textwrap.dedent("""
    import sys, torch, fewstep
    from fewstep.metrics import ModuleExtractor
    from fewstep.metrics.evaluate import sample_stats
    from fewstep.metrics.sampling import solver_sample_fn
    from fewstep.metrics.distributed import world

    def run():
        torch.set_num_threads(1)
        torch.manual_seed(0)
        net = torch.nn.Conv2d(1, 1, 3, padding=1)
        feat = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 6))
        den = fewstep.Denoiser(lambda x, t: net(x), fewstep.processes.VPDiscrete.linear(), "eps")
        with torch.no_grad():
            fn = solver_sample_fn(den, (1, 8, 8), "ddim", 3)
            return sample_stats(fn, 11, ModuleExtractor(feat, "lin", 6), batch_size=4, progress=False,
                                max_features=7).stats

    if __name__ == "__main__":
        stats = run()
        if world()[0] == 0:
            stats.save(sys.argv[1])
""")


def test_torchrun_sharding_matches_single_process(tmp_path):
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.exists():
        pytest.skip("torchrun not found next to the Python interpreter")
    (tmp_path / "job.py").write_text(SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(Path(fewstep.__file__).parents[1]), "OMP_NUM_THREADS": "1"}
    cmd = [str(torchrun), "--standalone", "--nproc_per_node=2", str(tmp_path / "job.py"), str(tmp_path / "w2.npz")]
    # torchrun picks free ports itself; another process can take one between its check and its bind,
    # so a failed launch is retried twice before the test fails with torchrun's own output.
    for attempt in range(3):
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
        if done.returncode == 0:
            break
    assert done.returncode == 0, f"torchrun failed three times:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    one, two = runpy.run_path(str(tmp_path / "job.py"))["run"](), FeatureStats.load(tmp_path / "w2.npz")
    assert one.n == two.n == 11
    np.testing.assert_allclose(two.mu, one.mu, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(two.sigma, one.sigma, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(two.features, one.features, rtol=1e-5, atol=1e-6)
