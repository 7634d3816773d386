#!/usr/bin/env bash
# Builds the shipped small Astra from nothing: record the four worlds, train the VAE, encode latents, train the
# transformer jointly on all worlds, export, evaluate. Every stage resumes where it stopped; run it again after an
# interruption. On a GPU machine pass e.g. VAE_STEPS=20000 TRAIN_STEPS=200000 DF_STEPS=200000 to train much longer.
# The transformer trains in two phases: the plain next-chunk recipe from scratch, then diffusion forcing (several
# causal target chunks per sequence, see docs/architecture.md) starting from the first phase's EMA weights.
#
#   bash scripts/build_small_model.sh [WORK_DIR]
set -euo pipefail
WORK=${1:-data/small-model}
EPISODES=$WORK/episodes
VAE_STEPS=${VAE_STEPS:-3000}
TRAIN_STEPS=${TRAIN_STEPS:-2250}
DF_STEPS=${DF_STEPS:-5000}
THREADS=${THREADS:-2}
export OMP_NUM_THREADS=$THREADS

record() {  # world train_episodes heldout_episodes
  astra worlds record --world "$1" --episodes "$2" --frames 129 --size 64 --out "$EPISODES" --split train --seed 0
  astra worlds record --world "$1" --episodes "$3" --frames 129 --size 64 --out "$EPISODES" --split heldout --seed 100000
}
record doom 400 24
record camera 200 24
record drive 200 24
record robot 120 24

astra vae train --episodes "$EPISODES" --out "$WORK/vae" --steps "$VAE_STEPS" --resume
astra data encode --episodes "$EPISODES" --vae "$WORK/vae" --out "$WORK/latents"
astra train --preset astra-small --out "$WORK/run" --set data="$WORK/latents" --set steps="$TRAIN_STEPS" --resume
astra train --preset astra-small --out "$WORK/run" --set data="$WORK/latents" --export
DF=(--preset astra-small --out "$WORK/run-df" --set data="$WORK/latents" --set init_from="$WORK/run/export"
    --set diffusion_forcing=true --set steps="$DF_STEPS" --set warmup_steps=100)
astra train "${DF[@]}" --resume
astra train "${DF[@]}" --export
astra eval --checkpoint "$WORK/run-df/export" --cases 8 --out "$WORK/eval"
echo "done: copy $WORK/vae to weights/astra-small-vae and $WORK/run-df/export to weights/astra-small if the eval is better"
