"""Cost of one data-Gaussian evaluation (fewstep.accel.stepaware) against one UNet evaluation of bundled:fashion-v1.

    PYTHONPATH=src python benchmarks/gaussian_step_cost.py

Also times reading the data Gaussian (Fashion-MNIST train mean and covariance, once per process).
Batch 16, 1 thread, 7 interleaved repeats, median.
"""
import time, statistics, torch, fewstep
from fewstep.accel.stepaware import data_gaussian
torch.set_num_threads(1)
d = fewstep.load_model("bundled:fashion-v1")
t0 = time.perf_counter(); mix = data_gaussian("fashion-mnist", (1, 28, 28)); print(f"data Gaussian (60000 images): {time.perf_counter()-t0:.1f} s")
g = mix.denoiser(d.process)
x = torch.randn(16, 1, 28, 28); t = torch.tensor(900.0)
ts = {"unet": [], "gauss": []}
with torch.no_grad():
    d.predict(x, t); g.predict(x, t)
    for _ in range(7):
        for k, f in (("unet", d), ("gauss", g)):
            s = time.perf_counter(); f.predict(x, t); ts[k].append(time.perf_counter() - s)
u, gg = statistics.median(ts["unet"]), statistics.median(ts["gauss"])
print(f"one evaluation, batch 16, 1 thread, median of 7 interleaved: UNet {1000*u:.1f} ms, data Gaussian {1000*gg:.2f} ms ({gg/u:.3f} of the UNet)")
