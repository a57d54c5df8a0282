#!/usr/bin/env bash
# Segmentation with few labels (issue 10, Embedding Earth): random init vs contrastive ViT vs dense contrastive
# ViT, fine-tuned at several label fractions, on the Sen1Floods11 scene (tiled), the synthetic AOI's land-cover
# masks and the Dubai aerial tiles. Numbers are reported in docs/segmentation.md.
#   bash scripts/segmentation.sh [DATA_DIR] [OUT_DIR]
# Every step resumes when re-run (stores are kept, pretraining resumes from its checkpoint, segment skips
# finished cells). ONLY=ingest,pretrain,segment picks stages, DATASETS=sen1floods11,synth,dubai the datasets;
# STEPS / PRE_STEPS / SEEDS / FRACTIONS resize it.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-../shared/data}
OUT=${2:-runs/segmentation}
EE=".venv/bin/earthembed"
export HF_HUB_OFFLINE=1
# one torch thread per process: measured on the shared 2-core VM (load ~20), a ViT-tiny fine-tuning step took
# 0.07 CPU-s / 0.38 s wall with 1 thread and 3.0 CPU-s / 11 s wall with 2 (OpenMP threads spin while the cores
# are busy); on a machine of your own set THREADS to its core count
export OMP_NUM_THREADS=${THREADS:-1}
ONLY=${ONLY:-ingest,pretrain,segment}
DATASETS=${DATASETS:-sen1floods11,synth,dubai}
FRACTIONS=${FRACTIONS:-0.01,0.05,0.1,0.25,1}
SEEDS=${SEEDS:-3}
STEPS=${STEPS:-60}           # fine-tuning steps per cell (batch 16), the same at every fraction
PRE_STEPS=${PRE_STEPS:-200}  # pretraining steps per objective

stage() { [[ ",$ONLY," == *",$1,"* ]]; }
dataset() { [[ ",$DATASETS," == *",$1,"* ]]; }
have() { $EE info "$1" >/dev/null 2>&1; }

pretrain_both() {  # STORE RUN_DIR [overrides shared by both objectives]
  local store=$1 run=$2; shift 2
  $EE pretrain --config contrastive_tiny --store "$store" --out "$run/contrastive" \
    train.max_steps="$PRE_STEPS" train.progress_bar=false data.batch_size=32 "$@"
  # dense: two views through encoder + decoder per step; batch 16 (x 64 points) and no band-group dropout (each
  # group-presence pattern is a separate ViT pass) keep it within this CPU budget
  $EE pretrain --config dense_tiny --store "$store" --out "$run/dense" \
    train.max_steps="$PRE_STEPS" train.progress_bar=false data.batch_size=16 augment.group_dropout=0.0 "$@"
}

segment() {  # STORE RUN_DIR TASK OUT [overrides]
  local store=$1 run=$2 task=$3 out=$4; shift 4
  # random copies the architecture of the first export (the same multimodal_vit_tiny for all three inits)
  $EE segment --init contrastive="$run/contrastive/export" --compare dense="$run/dense/export" --compare random \
    --store "$store" --task "$task" --out "$out" --fractions "$FRACTIONS" --seeds "$SEEDS" \
    train.max_steps="$STEPS" train.val_every_n_steps=$((STEPS / 2)) "$@"
}

# --- Sen1Floods11: one 512 px scene (S2 L1C 13 bands + S1 VV/VH), 32 px chips, spatial-block splits -------------
if dataset sen1floods11; then
  F=$OUT/sen1floods11
  if stage ingest && ! have "$F/store"; then
    $EE ingest sen1floods11 "$DATA/sen1floods11" --out "$F/store" --chip-size 32 --split-by block --overwrite
  fi
  # pretraining (unlabelled) uses the train split only (data.splits=train, the default): val/test stay unseen
  stage pretrain && pretrain_both "$F/store" "$F"
  stage segment && segment "$F/store" "$F" water_mask "$F/segment"
fi

# --- synthetic AOI: 1024 chips of 32 px, six land-cover classes (S2 L2A, S1, coherence, DEM) -------------------
if dataset synth; then
  S=$OUT/synth
  if stage ingest && ! have "$S/store"; then
    $EE synth --out "$S/store" --chips 1024 --chip-size 32 --seed 0
  fi
  stage pretrain && pretrain_both "$S/store" "$S"
  stage segment && segment "$S/store" "$S" landcover_mask "$S/segment"
fi

# --- Dubai aerial RGB (54 images, tiles 1-6), 64 px tiles, 5 classes, splits by source image -------------------
if dataset dubai; then
  D=$OUT/dubai
  if stage ingest && ! have "$D/store"; then
    $EE ingest pairs --images "$DATA/dubai-seg/*/images" --masks "$DATA/dubai-seg/*/masks" \
      --classes scripts/dubai-seg-classes.yaml --chip-size 64 --out "$D/store" --overwrite
  fi
  # pretraining on random 32 px crops of the 64 px tiles (cheaper; the ViT's sin-cos positions take any grid)
  stage pretrain && pretrain_both "$D/store" "$D" data.crop_size=32
  # fine-tuning at 64 px: batch 4 = the pixels of batch 16 at 32 px
  stage segment && segment "$D/store" "$D" mask "$D/segment" data.batch_size=4
fi
