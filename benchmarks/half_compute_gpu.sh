#!/usr/bin/env bash
# Half-compute recipe search (docs/training.md, "Half the compute from scratch"): bundled:fashion-v1's preset from
# scratch for 2,556 steps of 64 (half of v1's 5,111), cosine decay, four (rate, EMA half-life) pairs side by side;
# h6 / h7 / h8 spend the same images (163,584) in smaller batches: 5,112 steps of 32 / 10,224 of 16 / 20,448 of 8.
# h9 / h10 train in bf16 (autocast; on a CPU with AMX a training image costs under half of fp32's, see
# benchmarks/train_cost.py --precision): h9 is v1's own recipe (constant rate, 5,111 steps of 64), h10 9,000 steps of
# 32 with the cosine decay.
#
#   bash benchmarks/half_compute_gpu.sh [DATA] [OUT]      # DEV=cpu runs them on the CPU (about 1 hour each)
# (DEV=cpu THREADS=1 VARIANTS="h6 h7" for the CPU runs) then: PYTHONPATH=src python benchmarks/paired_fid.py features --model OUT/hN --nfe 10 --n 1000 --seed 100000 ...
set -u
DATA=${1:-fashion-mnist}; RUNS=${2:-runs}; DEV=${DEV:-cuda}
mkdir -p "$RUNS"
python3 - "$RUNS" <<'PY'
import json, copy, sys
from fewstep.training.presets import PRESETS
variants = {"h1": (5e-4, 50000), "h2": (1e-3, 20000), "h3": (5e-4, 20000), "h4": (1e-3, 50000),
            "h5": (2e-3, 20000), "h6": (1.4e-3, 20000, 32), "h7": (1e-3, 20000, 16),
            "h8": (7e-4, 20000, 8),  # h5-h8: CPU runs
            "h9": (5e-4, 50000, 64, 5111, "bf16", "constant"), "h10": (1.4e-3, 20000, 32, 9000, "bf16")}
for name, (lr, ema, *rest) in variants.items():
    batch_size, steps, precision, schedule = (rest + [64, None, "fp32", "cosine"][len(rest):])
    c = copy.deepcopy(PRESETS["fashion-unet"])
    c["training"].update(steps=steps or 2556 * 64 // batch_size, batch_size=batch_size, lr=lr,
                         ema_half_life_images=ema, warmup_steps=200 * 64 // batch_size if schedule == "cosine" else 200,
                         lr_schedule=schedule, checkpoint_every_steps=500, checkpoint_every_seconds=0,
                         keep_checkpoints=0, sample_every_steps=0, precision=precision)
    json.dump(c, open(f"{sys.argv[1]}/{name}.json", "w"), indent=1)
PY
for v in ${VARIANTS:-h1 h2 h3 h4}; do
  python3 -m fewstep train --config "$RUNS/$v.json" --data "$DATA" --out "$RUNS/$v" --no-progress --threads "${THREADS:-3}" \
      --device "$DEV" > "$RUNS/$v.log" 2>&1 &
done
wait
