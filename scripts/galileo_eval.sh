#!/usr/bin/env bash
# Galileo-nano (Tseng et al. 2025) on the real samples (issue 21): few-shot tables next to band statistics, RCF
# and a random-init Galileo (EuroSAT-MS, BigEarthNet S2+S1 / S2 / S1, Dubai RGB tiles), and segmentation from a
# Galileo init vs a random one (Sen1Floods11 scene, Dubai tiles). Numbers and their reading: docs/galileo.md.
# The default CPU recipe is not retrained here: docs/galileo.md cites docs/label_efficiency.md (same protocol).
#   bash scripts/galileo_eval.sh [DATA_DIR] [OUT_DIR]
# Resumable: every step is skipped when its output exists (stores, embedding tables, fewshot results.csv);
# segment skips its finished cells. ONLY=ingest,embed,val,fewshot,segment,tables picks stages,
# DATASETS=eurosat,bigearthnet,dubai,sen1floods11 the datasets; SEEDS / DUBAI_SEEDS / PATCH / SEG_SEEDS /
# SEG_STEPS / FRACTIONS / DUBAI_FRACTIONS resize it. WEIGHTS: the folder of Galileo-nano's encoder.pt.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-../shared/data}
OUT=${2:-runs/galileo}
EE=".venv/bin/earthembed"
PY=".venv/bin/python"
export HF_HUB_OFFLINE=1
# one torch thread per process (shared 2-core VM; see scripts/segmentation.sh); THREADS=N on a machine of your own
export OMP_NUM_THREADS=${THREADS:-1}
WEIGHTS=${WEIGHTS:-$DATA/weights/galileo-nano}
ONLY=${ONLY:-ingest,embed,val,fewshot,segment,tables}
DATASETS=${DATASETS:-eurosat,bigearthnet,dubai,sen1floods11}
SEEDS=${SEEDS:-10}            # few-shot budget draws (seeds 0..SEEDS-1), EuroSAT and BigEarthNet
DUBAI_SEEDS=${DUBAI_SEEDS:-5} # Dubai: 5 tasks x 9,810 tiles, 5 draws (as docs/label_efficiency.md)
PATCH=${PATCH:-4}             # Galileo patch size of every test table and segment run: 4, chosen over 8 on EuroSAT val
SEG_SEEDS=${SEG_SEEDS:-3}
SEG_STEPS=${SEG_STEPS:-60}    # fine-tuning steps per cell at every fraction, as scripts/segmentation.sh
FRACTIONS=${FRACTIONS:-0.01,0.05,0.1,0.25,1}
DUBAI_FRACTIONS=${DUBAI_FRACTIONS:-0.01,0.05,0.25}  # each Dubai cell scores 1,998 test tiles: ~1.5 min a cell

main() {  # the whole script is one function, so bash reads it all before running (safe to edit meanwhile)
stage() { [[ ",$ONLY," == *",$1,"* ]]; }
dataset() { [[ ",$DATASETS," == *",$1,"* ]]; }
have() { $EE info "$1" >/dev/null 2>&1; }
done_fewshot() { [[ -f "$1/results.csv" ]]; }

galileo() {  # STORE OUT PATCH [embed options...]: Galileo-nano embeddings (export written beside as OUT.model/)
  local store=$1 out=$2 p=$3; shift 3
  [[ -f "$out" ]] && return 0
  /usr/bin/time -f "$out: %e s wall, %M KB peak RSS" -o "$out.time" $EE embed --encoder galileo:nano \
    --weights "$WEIGHTS" --patch-size "$p" --store "$store" --out "$out" --quiet "$@"
  cat "$out.time"
}
fewshot() {  # OUT [fewshot options...]
  local out=$1; shift
  done_fewshot "$out" || $EE fewshot --out "$out" --seeds "$SEEDS" --quiet "$@"  # a later --seeds wins
}
segment() {  # STORE TASK OUT [options and overrides]: Galileo init vs random init (the Galileo architecture at the
  # same patch size, random weights); SEG_STEPS steps at every fraction (train.epochs would give a 2-chip
  # fraction 2 steps), the checkpoint chosen on val twice per cell
  local store=$1 task=$2 out=$3; shift 3
  $EE segment --init galileo:nano --weights "$WEIGHTS" --patch-size "$PATCH" --compare random --store "$store" \
    --task "$task" --out "$out" --seeds "$SEG_SEEDS" --quiet \
    train.max_steps="$SEG_STEPS" train.val_every_n_steps=$((SEG_STEPS / 2)) "$@"
}

tables() {  # FEWSHOT_DIR: markdown tables of docs/galileo.md (earthembed.evaluate.compare on results.csv +
  # bootstrap.parquet): scores; Galileo - each other set within each estimator, with the paired 95% interval;
  # each set at its own best estimator (by mean test score, as fewshot's best.csv), paired across estimators
  $PY - "$1" <<'PYEOF'
import sys
import pandas as pd
from earthembed.evaluate.compare import budget_scores, compare, compare_best_estimators, load_bootstrap

d = sys.argv[1]
res, boot = pd.read_csv(f"{d}/results.csv"), load_bootstrap(d)
feats = list(dict.fromkeys(res["features"]))
mine = next(f for f in feats if f.startswith("galileo"))  # galileo:emb_fused, or galileo_p8:emb_fused on val
others = [f for f in feats if f != mine]


def table(df, index, columns, values, order):
    t = df.pivot(index=index, columns=columns, values=values)[order].reset_index()
    rows = ["| " + " | ".join(map(str, t.columns)) + " |", "|" + "---|" * len(t.columns)]
    return "\n".join(rows + ["| " + " | ".join("" if pd.isna(v) else str(v) for v in r) + " |"
                             for r in t.itertuples(index=False)])


def cell(r):
    v = " **WIN**" if r.wins_paired else " LOSS" if r.loses_paired else " tie"
    return f"{r.diff:+.3f} [{r.diff_ci_low:+.3f}, {r.diff_ci_high:+.3f}]{v}"


s = budget_scores(res)
for task, g in s.groupby("task", sort=False):
    order = g.groupby("budget")["budget_n"].mean().sort_values().index.tolist()
    cols = [f"{b} ({round(g[g.budget == b].budget_n.mean())})" for b in order]
    g = g.assign(col=g["budget"].map(dict(zip(order, cols))),
                 cell=[f"{m:.3f} ± {sd:.3f} [{lo:.2f}, {hi:.2f}]" for m, sd, lo, hi
                       in zip(g["mean"], g["std"].fillna(0.0), g["ci_low"], g["ci_high"])])
    print(f"### {task}: {g['metric'].iloc[0]} (mean ± std over {g['n_seeds'].max()} seeds [mean 95% bootstrap CI]);"
          " columns: budget (training chips)\n")
    print(table(g, ["estimator", "features"], "col", "cell", cols))
    c = compare(res[res.task == task], mine, others, boot)
    c = c.assign(col=c["budget"].map(dict(zip(order, cols))), cell=[cell(r) for r in c.itertuples(index=False)])
    print(f"\n`{mine}` minus each other set, same estimator: difference [95% paired interval]\n")
    print(table(c, ["estimator", "other"], "col", "cell", cols))
    b = compare_best_estimators(res[res.task == task], mine, others, boot)
    b = b.assign(col=b["budget"].map(dict(zip(order, cols))),
                 cell=[f"{cell(r)} ({r.estimator} vs {r.other_estimator})" for r in b.itertuples(index=False)])
    print(f"\nEach set at its own best estimator (chosen by mean test score, as best.csv): `{mine}` minus other\n")
    print(table(b, ["other"], "col", "cell", cols))
    print()
PYEOF
}

seg_pairs() {  # SEGMENT_DIR: Galileo init minus random init, seed by seed (the same label draw and training seed)
  $PY - "$1" <<'PYEOF'
import sys
import pandas as pd

r = pd.read_csv(f"{sys.argv[1]}/results.csv")
m = r[r.metric == "miou"].pivot_table(index=["budget", "seed"], columns="features", values="value")
d = (m["galileo:nano"] - m["random"]).groupby(level=0)
n = r[r.metric == "miou"].groupby("budget")["budget_n"].first()
print("| fraction (chips) | Galileo - random mIoU, mean [min, max] over seeds | seeds where Galileo is ahead |")
print("|---|---|---|")
for b, g in d:
    print(f"| {b} ({n[b]}) | {g.mean():+.3f} [{g.min():+.3f}, {g.max():+.3f}] | {int((g > 0).sum())} of {len(g)} |")
t = r[r.metric == "miou"].groupby("features")["fit_s"].sum()
print("\nfit_s summed over the cells: " + ", ".join(f"{k} {v / 60:.1f} min" for k, v in t.items()) + "\n")
PYEOF
}

# --- EuroSAT-MS: S2 L1C, 13 bands, 200 chips of 64 px, 10 classes (split 120 / 40 / 40) ------------------------
if dataset eurosat; then
  E=$OUT/eurosat
  mkdir -p "$E"
  if stage ingest && ! have "$E/store"; then $EE ingest eurosat "$DATA/eurosat-ms" --out "$E/store" --overwrite; fi
  if stage embed; then
    galileo "$E/store" "$E/galileo_p8.parquet" 8
    galileo "$E/store" "$E/galileo_p4.parquet" 4
  fi
  # the choice of patch size (8 vs 4), on val only: budgets from the 120 train chips, scored on the 40 val chips
  stage val && fewshot "$E/fewshot_val" --embeddings galileo_p8="$E/galileo_p8.parquet" \
    --embeddings galileo_p4="$E/galileo_p4.parquet" --store "$E/store" --task label --holdout val \
    --budgets 1,2,5,10,all --baselines none --feature-columns emb_fused --estimators logreg,knn
  # test, once: random_init is a random Galileo of the first table's config (same patch size)
  stage fewshot && fewshot "$E/fewshot" --embeddings galileo="$E/galileo_p$PATCH.parquet" --store "$E/store" \
    --task label --budgets 1,2,5,10,all --baselines band_stats,rcf,random_init --feature-columns emb_fused \
    --estimators logreg,knn
fi

# --- BigEarthNet v2 layout: S2 L2A 12 bands + S1 VV/VH, 54 pairs of 120 px, 19-class multi-label (36 pool / 18 test)
if dataset bigearthnet; then
  B=$OUT/bigearthnet
  mkdir -p "$B"
  if stage ingest && ! have "$B/store"; then $EE ingest bigearthnet "$DATA/bigearthnet" --out "$B/store" --overwrite; fi
  if stage embed; then
    galileo "$B/store" "$B/galileo_s2s1.parquet" "$PATCH" --modalities s2,s1 --batch-size 16
    galileo "$B/store" "$B/galileo_s2.parquet" "$PATCH" --modalities s2 --batch-size 16
    galileo "$B/store" "$B/galileo_s1.parquet" "$PATCH" --modalities s1 --batch-size 16
  fi
  stage fewshot && fewshot "$B/fewshot" --embeddings galileo="$B/galileo_s2s1.parquet" \
    --embeddings galileo_s2="$B/galileo_s2.parquet" --embeddings galileo_s1="$B/galileo_s1.parquet" \
    --store "$B/store" --task labels --budgets 5,10,20,all --baselines band_stats,rcf,random_init \
    --feature-columns emb_fused --estimators logreg,knn
fi

# --- Dubai aerial tiles: RGB, 54 images cut into 9,810 tiles of 64 px, 5 classes, split by image -------------
if dataset dubai; then
  D=$OUT/dubai
  mkdir -p "$D"
  if stage ingest && ! have "$D/store"; then
    $EE ingest pairs --images "$DATA/dubai-seg/*/images" --masks "$DATA/dubai-seg/*/masks" \
      --classes scripts/dubai-seg-classes.yaml --chip-size 64 --out "$D/store" --overwrite
  fi
  stage embed && galileo "$D/store" "$D/galileo_p$PATCH.parquet" "$PATCH"
  stage fewshot && fewshot "$D/fewshot" --embeddings galileo="$D/galileo_p$PATCH.parquet" --store "$D/store" \
    --task frac_building,frac_land,frac_road,frac_vegetation,frac_water --seeds "$DUBAI_SEEDS" \
    --budgets 10,50,100,500 --baselines band_stats,rcf,random_init --feature-columns emb_fused --estimators ridge,knn
  # segmentation: 64 px tiles, batch 4 (the pixels of batch 16 at 32 px), as scripts/segmentation.sh
  stage segment && segment "$D/store" mask "$D/segment" --fractions "$DUBAI_FRACTIONS" data.batch_size=4
fi

# --- Sen1Floods11: one 512 px scene (S2 L1C 13 bands + S1 VV/VH), 32 px chips, spatial-block splits -------------
if dataset sen1floods11; then
  F=$OUT/sen1floods11
  mkdir -p "$F"
  if stage ingest && ! have "$F/store"; then
    $EE ingest sen1floods11 "$DATA/sen1floods11" --out "$F/store" --chip-size 32 --split-by block --overwrite
  fi
  stage segment && segment "$F/store" water_mask "$F/segment" --fractions "$FRACTIONS"
fi

# --- the tables of docs/galileo.md ----------------------------------------------------------------------------
if stage tables; then
  for d in "$OUT"/eurosat/fewshot_val "$OUT"/eurosat/fewshot "$OUT"/bigearthnet/fewshot "$OUT"/dubai/fewshot; do
    if done_fewshot "$d"; then echo "## $d"; echo; tables "$d"; fi
  done
  for d in "$OUT"/sen1floods11/segment "$OUT"/dubai/segment; do
    [[ -f "$d/summary.md" ]] || continue
    echo "## $d"; sed -n '/^## mIoU by label fraction/,/^## Full-label/p' "$d/summary.md" | sed '$d'
    seg_pairs "$d"
  done
fi
true
}
main "$@"
exit
