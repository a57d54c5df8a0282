#!/usr/bin/env bash
# Label efficiency on the real samples in ../shared/data: EuroSAT-MS (classification), the Dubai aerial tiles
# (per-chip land-cover fractions, regression) and BigEarthNet S2+S1 (multi-label), each pretrained WITHOUT labels
# with the default CPU recipe (`earthembed pretrain` without --config), against band statistics, random
# convolutional features (when the fewshot `rcf` baseline is available) and a random-init encoder.
# Results and their reading: docs/label_efficiency.md.
#   Usage: bash scripts/label_efficiency.sh [DATA_DIR] [OUT_DIR]
# Every step is an `earthembed` command; pretraining runs under /usr/bin/time (wall and CPU time in
# OUT/<dataset>/pretrain.time). Pretraining uses every chip of the store (unlabelled; data.splits=all).
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-../shared/data}
OUT=${2:-runs/label_efficiency}
EE=".venv/bin/earthembed"
export HF_HUB_OFFLINE=1
SEEDS=${SEEDS:-5}
# PRE_STEPS shortens pretraining (default: the recipe's train.max_steps); docs/label_efficiency.md says which was used
# rcf joins the baselines when this version of fewshot has it
BASELINES=band_stats,random_init
if $EE fewshot --help | grep -q "rcf"; then BASELINES=band_stats,rcf,random_init; fi

pretrain() {  # pretrain STORE RUN [overrides...]: the default recipe, timed
  local store=$1 run=$2; shift 2
  /usr/bin/time -v -o "$run.time" $EE pretrain --store "$store" --out "$run" train.progress_bar=false \
    ${PRE_STEPS:+train.max_steps=$PRE_STEPS} "$@"
  grep -E "Elapsed|User time|System time" "$run.time"
}

# --- EuroSAT-MS: S2 L1C, 13 bands, 200 chips of 64 px, 10 classes (test: 40 chips) -----------------------------
E=$OUT/eurosat
mkdir -p $E
$EE ingest eurosat "$DATA/eurosat-ms" --out $E/store --overwrite
pretrain $E/store $E/run
$EE embed --checkpoint $E/run/export --store $E/store --out $E/emb.parquet --quiet
$EE fewshot --embeddings pretrained=$E/emb.parquet --store $E/store --task label --out $E/fewshot \
  --budgets 1,2,5,10,all --seeds $SEEDS --baselines $BASELINES --feature-columns emb_fused --estimators logreg,knn

# --- Dubai aerial tiles: RGB, 54 images cut into 64 px tiles, fractions of 5 classes (split by image) ---------
D=$OUT/dubai
mkdir -p $D
$EE ingest pairs --images "$DATA/dubai-seg/*/images" --masks "$DATA/dubai-seg/*/masks" \
  --classes scripts/dubai-seg-classes.yaml --chip-size 64 --out $D/store --overwrite
pretrain $D/store $D/run probe.max_chips=800
$EE embed --checkpoint $D/run/export --store $D/store --out $D/emb.parquet --quiet
$EE fewshot --embeddings pretrained=$D/emb.parquet --store $D/store \
  --task frac_building,frac_land,frac_road,frac_vegetation,frac_water --out $D/fewshot \
  --budgets 10,50,100,500 --seeds $SEEDS --baselines $BASELINES --feature-columns emb_fused --estimators ridge,knn

# --- BigEarthNet v2 layout: S2 L2A 12 bands + S1 VV/VH, 54 pairs of 120 px, 19-class multi-label (test: 18) ---
B=$OUT/bigearthnet
mkdir -p $B
$EE ingest bigearthnet "$DATA/bigearthnet" --out $B/store --overwrite
pretrain $B/store $B/run data.batch_size=54 'probe.tasks=[labels]'
$EE embed --checkpoint $B/run/export --store $B/store --out $B/emb.parquet --quiet
$EE fewshot --embeddings pretrained=$B/emb.parquet --store $B/store --task labels --out $B/fewshot \
  --budgets 5,10,20,all --seeds $SEEDS --baselines $BASELINES --feature-columns emb_fused --estimators logreg,knn

# the tables of docs/label_efficiency.md (pretrained vs each baseline, per estimator and budget)
.venv/bin/python scripts/label_efficiency_tables.py $E/fewshot $D/fewshot $B/fewshot
