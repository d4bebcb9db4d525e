#!/usr/bin/env bash
# Retrain the bundled models on one GPU (docs/training.md, "The bundled model"): the exact run that made
# bundled:fashion (2026-12-04, one H200 shared by the three jobs below, about 7 minutes in all).
#
#   bash benchmarks/retrain_bundled_gpu.sh [DATA] [OUT]     # DATA default fashion-mnist, OUT default runs
#
# A  bundled:fashion: bundled:fashion-v1 continued with a cosine-decayed rate, 3000 steps, resumed to 6000 and
#    8000 (each resume stretches the cosine to the new end). On the H200 run segment 2 hit its 120 s cap at step
#    5500, so segment 3 resumed from 5500 (steps 5500-6000 ran on the 8000-step cosine instead of the 6000-step one).
# B  bundled:fashion-cond: bundled:fashion-cond-3500 continued the same way for 8000 steps.
# C  a 2-rectified flow of bundled:fashion-v1: 20,000 dpm++3m 10-NFE pairs, batch 128, until the cap.
# On the GPU each job has a wall-clock cap (none with DEV=cpu; C then runs its 100,000 steps: stop it by hand); checkpoints every 500-1000 steps, so a capped job keeps its last checkpoint.
set -u
DATA=${1:-fashion-mnist}; RUNS=${2:-runs}; DEV=${DEV:-cuda}
export PYTHONUNBUFFERED=1 PYTHONPATH="$(cd "$(dirname "$0")/.." && pwd)/src${PYTHONPATH:+:$PYTHONPATH}"
THREADS=$([ "$DEV" = cpu ] && echo 1 || echo 4)
mkdir -p "$RUNS"
python3 - "$RUNS" <<'PY'
import json, copy, sys
from fewstep.training.presets import PRESETS
runs = sys.argv[1]
a = copy.deepcopy(PRESETS["fashion-unet"]); a["objective"]["init_from"] = "bundled:fashion-v1"
a["training"].update(steps=3000, lr=5e-4, warmup_steps=100, lr_schedule="cosine", posthoc_ema_sigma_rels=[0.05, 0.1],
                     posthoc_ema_snapshot_every=250, checkpoint_every_steps=500, keep_checkpoints=0,
                     sample_every_steps=0, seed=1, precision="fp32")
json.dump(a, open(f"{runs}/fashion2.json", "w"), indent=1)
b = copy.deepcopy(PRESETS["fashion-unet-cond"]); b["objective"]["init_from"] = "bundled:fashion-cond-3500"
b["training"].update(steps=8000, lr=5e-4, warmup_steps=100, lr_schedule="cosine", checkpoint_every_steps=1000,
                     keep_checkpoints=0, sample_every_steps=0, seed=1, precision="fp32")
json.dump(b, open(f"{runs}/cond2.json", "w"), indent=1)
PY
# cap SECONDS CMD...: the GPU run's wall-clock caps; on the CPU (DEV=cpu) every job runs to its end
cap() { if [ "$DEV" = cpu ]; then shift; "$@"; else timeout "$@"; fi; }
F="python3 -m fewstep"; COMMON="--data $DATA --no-progress --threads $THREADS --device $DEV"
( cap 150 $F train --config "$RUNS/fashion2.json" --out "$RUNS/fashion2" $COMMON
  cap 120 $F train --out "$RUNS/fashion2" --resume --steps 6000 $COMMON
  cap 100 $F train --out "$RUNS/fashion2" --resume --steps 8000 $COMMON ) > "$RUNS/fashion2.log" 2>&1 &
( cap 420 $F train --config "$RUNS/cond2.json" --out "$RUNS/cond2" $COMMON ) > "$RUNS/cond2.log" 2>&1 &
( cap 400 $F reflow --teacher bundled:fashion-v1 --out "$RUNS/reflow_v1" --solver dpm++3m --nfe 10 --pairs 20000 \
    --batch-size 128 --lr 2e-4 --steps 100000 --sample-every 0 --checkpoint-every-steps 1000 --keep-checkpoints 0 \
    --no-progress --threads $THREADS --device $DEV ) > "$RUNS/reflow_v1.log" 2>&1 &
wait
# ship: python -c "from fewstep.checkpoint import export_ema; export_ema('runs/fashion2/checkpoints/step-00008000', 'src/fewstep/assets/fashion')"
