#!/usr/bin/env bash
# Train astra-small on a lent GPU machine: no network, a copy of the working tree plus at most 64 MiB carried, 10
# minutes a command (the `device` tool's limits; docs/gpu.md). It unpacks the carried latent pack, times a short probe
# run to size the real one to MINUTES of training (so the cosine schedule ends when time does), trains, and copies
# the export (EMA weights + config.json) and the logs into $OUT. RECIPE=scratch (default) runs
# scripts/build_small_model.sh's two stages from nothing: flow matching with the motion prior at zero, then
# PRIOR_SHARE of the minutes with the prior fitted before its first step and frozen; RECIPE=continue goes on from the
# shipped weights (INIT): 9,000 more CPU steps gained PSNR at guidance 1, lost following (docs/gpu.md, "Which recipe").
# Only python3 with torch, numpy, safetensors, einops and tqdm is needed; astra is run from the tree, not installed.
#
#   here, once:  astra data pack data/latents --out gpu/latents.pack --split all --parts 2   (6 bits, 2 x 23 MB)
#                echo /gpu/ >> .git/info/exclude
#   device:      1) cp gpu/latents-1of2.pack /tmp/                       (carry: gpu/latents-1of2.pack)
#                2) PACK="/tmp/latents-1of2.pack gpu/latents-2of2.pack" bash scripts/gpu_train.sh
#                                                                        (carry: gpu/latents-2of2.pack; timeout_s 600)
#   then here:   astra eval --checkpoint <fetched folder> --split train --cases 16 --rollout-frames 32 ...
#
# Every setting below can be given in the environment; EXTRA adds `--set NAME=VALUE` words to every run.
set -euo pipefail
RECIPE=${RECIPE:-scratch}
PACK=${PACK:-gpu/latents.pack}
PRESET=${PRESET:-astra-small}
INIT=${INIT:-weights/astra-small}       # RECIPE=continue: the weights to go on from
MINUTES=${MINUTES:-6}                   # training wall time; the probe, setup and export come on top (~1 min)
CLOCK_MARGIN=${CLOCK_MARGIN:-1.2}        # each run stops by the clock at CLOCK_MARGIN x its minutes at the latest
PRIOR_SHARE=${PRIOR_SHARE:-0.15}        # RECIPE=scratch: the share of MINUTES for the motion-prior stage
BATCH=${BATCH:-256}
LR=${LR:-$([ "$RECIPE" = scratch ] && echo 5e-4 || echo 3e-4)}  # the preset's from scratch; lower to go on
WARMUP=${WARMUP:-100}
SEED=${SEED:-40}
PROBE_STEPS=${PROBE_STEPS:-30}
VALIDATIONS=${VALIDATIONS:-4}           # held-out validation losses over each run (0 = none)
MOTION_FIT_BATCHES=${MOTION_FIT_BATCHES:-8}  # RECIPE=scratch: batches of BATCH clips the prior is fitted on
EXTRA=${EXTRA:-}
PYTHON=${PYTHON:-python3}
WORK=${WORK:-/tmp/astra-gpu}
RESULTS=${OUT:-out/gpu}                 # the device tool's $OUT comes back to the session
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
case "$RECIPE" in
  continue | scratch) ;;
  *) echo "error: RECIPE must be continue or scratch, got $RECIPE" >&2; exit 2 ;;
esac

astra() { "$PYTHON" -m astra "$@"; }
calc() { "$PYTHON" -c "print($1)"; }
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
heldout=$("$PYTHON" -c "import json, sys; print(sum(e['split'] == 'heldout' for e in json.load(open(sys.argv[1]))['entries']))" \
  "$WORK/latents/index.json")
if [ "$VALIDATIONS" -gt 0 ] && [ "$heldout" -eq 0 ]; then
  echo "warning: the pack has no held-out clips (pack with --split all); training without validation" >&2
  VALIDATIONS=0
fi

settings=(--preset "$PRESET" --set data="$WORK/latents" --set batch_size="$BATCH" --set lr="$LR" --set seed="$SEED"
          --set warmup_steps="$WARMUP" --no-progress)
for word in $EXTRA; do settings+=(--set "$word"); done
first=(--set motion_fit_batches=0)  # the first (or only) stage keeps the prior as loaded, or at zero from scratch
if [ "$RECIPE" = continue ]; then first+=(--set init_from="$INIT"); fi

# 1) the rate: a short run of the first stage (its first steps pay for start-up and are not counted)
rm -rf "$WORK/probe"
astra train "${settings[@]}" "${first[@]}" --out "$WORK/probe" --set steps="$PROBE_STEPS" --set log_every=1 \
  --set save_every="$PROBE_STEPS" --set val_every=0
steps_in() {  # minutes -> steps at the probe's rate
  "$PYTHON" - "$WORK/probe" "$BATCH" "$1" <<'EOF'
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
}

# 2) the runs, each stopped by the clock at the latest (max_minutes), validated VALIDATIONS times on held-out clips
train_for() {  # OUT_DIR MINUTES [--set ...]: a run sized to the minutes, exported to OUT_DIR/export
  local out=$1 minutes=$2 steps val_every=0
  shift 2
  steps=$(steps_in "$minutes")
  if [ "$VALIDATIONS" -gt 0 ]; then val_every=$(( (steps + VALIDATIONS - 1) / VALIDATIONS )); fi
  rm -rf "$out"
  astra train "${settings[@]}" "$@" --out "$out" --set steps="$steps" --set val_every="$val_every" \
    --set save_every="$steps" --set log_every=10 --set max_minutes="$(calc "$minutes * $CLOCK_MARGIN")"
}
if [ "$RECIPE" = continue ]; then
  train_for "$WORK/run" "$MINUTES" "${first[@]}"
else
  train_for "$WORK/flow" "$(calc "$MINUTES * (1 - $PRIOR_SHARE)")" "${first[@]}"
  mkdir -p "$RESULTS/flow"
  cp "$WORK/flow/metrics.csv" "$RESULTS/flow/"
  [ -f "$WORK/flow/validation.csv" ] && cp "$WORK/flow/validation.csv" "$RESULTS/flow/"
  train_for "$WORK/run" "$(calc "$MINUTES * $PRIOR_SHARE")" --set init_from="$WORK/flow/export" \
    --set motion_fit_batches="$MOTION_FIT_BATCHES" --set warmup_steps=50
fi
cp "$WORK/run/export/model.safetensors" "$WORK/run/export/config.json" "$WORK/run/metrics.csv" \
  "$WORK/run/train_config.json" "$RESULTS"/
[ -f "$WORK/run/validation.csv" ] && cp "$WORK/run/validation.csv" "$RESULTS"/
step=$("$PYTHON" -c "import json, sys; print(json.load(open(sys.argv[1]))['metadata']['step'])" "$WORK/run/export/config.json")
echo "done: RECIPE=$RECIPE, $step steps in the last run; the export is in $RESULTS"
