#!/usr/bin/env bash
# The real samples in ../shared/data through ingest -> pretrain (tiny config) -> embed -> few-shot -> plot.
# Results are reported in docs/real_samples.md.  Usage: bash scripts/real_samples.sh [DATA_DIR] [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-../shared/data}
OUT=${2:-runs/real}
EE=".venv/bin/earthembed"
export HF_HUB_OFFLINE=1

# --- EuroSAT-MS: one modality (S2 L1C, 13 bands), 200 chips, 10 classes --------------------------------------
E=$OUT/eurosat
$EE ingest eurosat "$DATA/eurosat-ms" --out $E/store --overwrite
$EE info $E/store
# pretraining is unlabelled, so it may use every chip of the AOI (data.splits=all), as in Jungbluth et al.
$EE pretrain --config contrastive_tiny --store $E/store --out $E/run \
  data.splits=all data.batch_size=32 data.crop_size=32 train.max_steps=400 train.warmup_steps=20
$EE embed --checkpoint $E/run/export --store $E/store --out $E/emb.parquet --quiet
$EE embed --checkpoint $E/run/export --store $E/store --out $E/emb_rgb.parquet --bands 's2:B04,B03,B02' --quiet
$EE embed --checkpoint $E/run/export --store $E/store --out $E/emb_random.parquet --random-init --quiet
$EE fewshot --embeddings pretrained=$E/emb.parquet --embeddings pretrained_rgb=$E/emb_rgb.parquet \
  --random-init $E/emb_random.parquet --store $E/store --task label --out $E/fewshot \
  --budgets 1,2,5,10,all --seeds 5 --feature-columns emb_fused
$EE plot-embeddings $E/emb.parquet --store $E/store --color-by label --out $E/embeddings_pca.png

# --- BigEarthNet v2 layout: S2 L2A (12 bands) + S1 (VV, VH), 54 pairs, 19-class multi-labels -----------------
B=$OUT/bigearthnet
$EE ingest bigearthnet "$DATA/bigearthnet" --out $B/store --overwrite
$EE info $B/store
$EE pretrain --config contrastive_tiny --store $B/store --out $B/run \
  data.splits=all data.batch_size=16 data.crop_size=64 train.max_steps=300 train.warmup_steps=20
# S1+S2, S2 only and S1 only from the same multimodal checkpoint
$EE embed --checkpoint $B/run/export --store $B/store --out $B/emb_s1s2.parquet --modalities s2,s1 --quiet
$EE embed --checkpoint $B/run/export --store $B/store --out $B/emb_s2.parquet --modalities s2 --quiet
$EE embed --checkpoint $B/run/export --store $B/store --out $B/emb_s1.parquet --modalities s1 --quiet
$EE embed --checkpoint $B/run/export --store $B/store --out $B/emb_random.parquet --random-init --quiet
$EE fewshot --embeddings s1s2=$B/emb_s1s2.parquet --embeddings s2only=$B/emb_s2.parquet \
  --embeddings s1only=$B/emb_s1.parquet --random-init $B/emb_random.parquet --store $B/store \
  --task labels --out $B/fewshot --budgets 5,10,20,all --seeds 5 --feature-columns emb_fused
$EE plot-embeddings $B/emb_s1s2.parquet --store $B/store --color-by labels --out $B/embeddings_pca.png
