#!/usr/bin/env bash
# Issue #6's measurement: Agora vs plain fine-tuning (round 1 of the same run) on 500 RT examples, 3 seeds, and the
# same student on the full RT train split; one job at a time, at nice 19 (shared 2-core machine). Resumable: each
# run directory keeps its state, so re-running the script continues where it stopped. See docs/agora.md.
set -euo pipefail
cd "$(dirname "$0")/.."
. .venv/bin/activate
export OMP_WAIT_POLICY=PASSIVE
R=runs/agora
STUDENT=$R/student-4-8-256-512     # ⟨4,8,256,512⟩ slice-initialised from all-MiniLM-L6-v2 (agora.slice_student)
LABELLER=$R/labeller/model          # all-MiniLM-L6-v2 fine-tuned on the full RT train split
THETA="lr=3e-4,epochs=6;lr=6e-4,epochs=6"
if [ ! -f $STUDENT/config.json ]; then
  nice -n 19 python -c "from bortengine import agora, training; s, t = agora.slice_student('4,8,256,512'); training.export(s, '$STUDENT', t)"
fi
if [ ! -f $LABELLER/config.json ]; then
  nice -n 19 python -m bortengine finetune --task rt --out $R/labeller --epochs 2 --lr 1e-4 --seed 0 \
      --time-budget 14m --clock wall --no-progress
fi
for seed in ${SEEDS:-0 1 2}; do
  nice -n 19 python -m bortengine finetune --agora --recipe paper --model $STUDENT --student-arch none --labeller $LABELLER \
      --task rt --train-limit 500 --settings "$THETA" --per-mistake 4 --seed $seed --out $R/seed-$seed \
      > $R/seed-$seed.log 2>&1
done
for seed in ${REF_SEEDS:-0 1 2}; do
  nice -n 19 python -m bortengine finetune --agora --recipe paper --model $STUDENT --student-arch none --labeller $LABELLER \
      --task rt --settings "lr=3e-4,epochs=3" --rounds 1 --seed $seed --out $R/full-$seed > $R/full-$seed.log 2>&1
done
# the exploratory variant of docs/agora.md: 8 new points per dev mistake instead of 4
if [ -n "${VARIANT_PM8:-}" ]; then
  for seed in ${SEEDS:-0 1 2}; do
    nice -n 19 python -m bortengine finetune --agora --recipe paper --model $STUDENT --student-arch none --labeller $LABELLER \
        --task rt --train-limit 500 --settings "$THETA" --per-mistake 8 --seed $seed \
        --out $R/variant-pm8-seed-$seed > $R/variant-pm8-seed-$seed.log 2>&1
  done
fi
# pre-registered configuration D of docs/agora.md (run on seeds 6 7 8 there): 64 new points per mistake, the
# labeller's soft labels on the generated points only, half of dev kept apart to rank Θ and pick each round's best
if [ -n "${VARIANT_D:-}" ]; then
  for seed in ${SEEDS:-6 7 8}; do
    nice -n 19 python -m bortengine finetune --agora --recipe paper --model $STUDENT --student-arch none --labeller $LABELLER \
        --task rt --train-limit 500 --settings "$THETA" --per-mistake 64 --agora-distill 0.5 \
        --agora-distill-on generated --select-fraction 0.5 --seed $seed --out $R/pm64g-sel-seed-$seed \
        > $R/pm64g-sel-seed-$seed.log 2>&1
  done
  python -m bortengine.agora $R/pm64g-sel-seed-? --reference $R/full-? --plot docs/agora-pm64g-sel.png \
      > docs/agora-summary-pm64g-sel.json
fi
if [ -n "${VARIANT_G:-}" ]; then
  # configuration G = the default recipe ('scarce'): no Agora options beyond the run's own
  for seed in 12 13 14; do
    nice -n 19 python -m bortengine finetune --agora --model $STUDENT --student-arch none --labeller $LABELLER \
        --task rt --train-limit 500 --seed $seed --out $R/g-pm128-rf04-seed-$seed >> $R/g-pm128-rf04-seed-$seed.log 2>&1
  done
  python -m bortengine.agora $R/g-pm128-rf04-seed-{12,13,14} --reference $R/full-? \
      --plot docs/agora-g-pm128-rf04.png > docs/agora-summary-g-pm128-rf04.json
fi
python -m bortengine.agora $R/seed-* --reference $R/full-* --plot docs/agora-rounds.png > $R/summary.json
