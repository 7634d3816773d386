#!/usr/bin/env bash
# Continue training astra-small on a lent GPU machine: no network, a copy of the working tree plus at most 64 MiB
# carried, 10 minutes a command (the `device` tool's limits; docs/gpu.md). It unpacks the carried latent pack, times
# a short probe run to size the real one to MINUTES of training (so the cosine schedule ends when time does),
# trains from the shipped weights, and copies the export (EMA weights + config.json) and the logs into $OUT.
# Only python3 with torch, numpy, safetensors, einops and tqdm is needed; astra is run from the tree, not installed.
#
#   here, once:  astra data pack /work/data/latents --out gpu/latents.pack --split all --parts 2   (6 bits, 2 x 23 MB)
#                echo /gpu/ >> .git/info/exclude
#   device:      1) cp gpu/latents-1of2.pack /tmp/                       (carry: gpu/latents-1of2.pack)
#                2) PACK="/tmp/latents-1of2.pack gpu/latents-2of2.pack" bash scripts/gpu_continue.sh
#                                                                        (carry: gpu/latents-2of2.pack; timeout_s 600)
#   then here:   astra eval --checkpoint <fetched folder> --split train --cases 16 --rollout-frames 32 ...
#
# Every setting below can be given in the environment; EXTRA adds `--set NAME=VALUE` words to both runs.
set -euo pipefail
PACK=${PACK:-gpu/latents.pack}
PRESET=${PRESET:-astra-small}
INIT=${INIT-weights/astra-small}        # set empty: from scratch (then the preset fits the motion prior first)
MINUTES=${MINUTES:-6}                   # training wall time; the probe, setup and export come on top (~1 min)
BATCH=${BATCH:-256}
LR=${LR:-3e-4}
WARMUP=${WARMUP:-100}
SEED=${SEED:-40}
PROBE_STEPS=${PROBE_STEPS:-30}
VALIDATIONS=${VALIDATIONS:-4}           # held-out validation losses over the run (0 = none)
EXTRA=${EXTRA:-}
PYTHON=${PYTHON:-python3}
WORK=${WORK:-/tmp/astra-gpu}
RESULTS=${OUT:-out/gpu}                 # the device tool's $OUT comes back to the session
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1

astra() { "$PYTHON" -m astra "$@"; }
mkdir -p "$RESULTS" "$WORK"
"$PYTHON" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"
# PACK: one file or several (the parts of one, each an even sample); a part that did not arrive is left out
if [ ! -f "$WORK/latents/index.json" ]; then
  found=()
  for file in $PACK; do
    if [ -f "$file" ]; then found+=("$file"); else echo "warning: pack part $file is missing; training without it" >&2; fi
  done
  [ ${#found[@]} -gt 0 ] || { echo "error: none of the packs ($PACK) is here" >&2; exit 1; }
  astra data unpack "${found[@]}" --out "$WORK/latents"
fi

settings=(--preset "$PRESET" --set data="$WORK/latents" --set batch_size="$BATCH" --set lr="$LR" --set seed="$SEED"
          --set warmup_steps="$WARMUP" --no-progress)
if [ -n "$INIT" ]; then settings+=(--set init_from="$INIT" --set motion_fit_batches=0); fi
for word in $EXTRA; do settings+=(--set "$word"); done

# 1) the rate: a short run (its first steps pay for start-up and are not counted)
rm -rf "$WORK/probe"
astra train "${settings[@]}" --out "$WORK/probe" --set steps="$PROBE_STEPS" --set log_every=1 \
  --set save_every="$PROBE_STEPS" --set val_every=0
steps=$("$PYTHON" - "$WORK/probe" "$BATCH" "$MINUTES" <<'EOF'
import sys
from statistics import median

from astra.train.logging import read_metrics

rows = read_metrics(sys.argv[1])
batch, minutes = int(sys.argv[2]), float(sys.argv[3])
rate = median(row["samples_per_s"] for row in rows[len(rows) // 3 :])  # samples/s once warm
print(max(1, int(rate * minutes * 60 / batch)))
print(f"probe: {rate:.0f} samples/s -> {int(rate * minutes * 60 / batch)} steps of {batch} in {minutes:g} min",
      file=sys.stderr)
EOF
)

# 2) the run, stopped by the clock at the latest (max_minutes), validated VALIDATIONS times on held-out clips
val_every=0
if [ "$VALIDATIONS" -gt 0 ]; then val_every=$(( (steps + VALIDATIONS - 1) / VALIDATIONS )); fi
rm -rf "$WORK/run"
astra train "${settings[@]}" --out "$WORK/run" --set steps="$steps" --set val_every="$val_every" \
  --set save_every="$steps" --set log_every=10 --set max_minutes="$("$PYTHON" -c "print($MINUTES * 1.2)")"
cp "$WORK/run/export/model.safetensors" "$WORK/run/export/config.json" "$WORK/run/metrics.csv" \
  "$WORK/run/train_config.json" "$RESULTS"/
[ -f "$WORK/run/validation.csv" ] && cp "$WORK/run/validation.csv" "$RESULTS"/
echo "done: $steps steps; the export is in $RESULTS"
