# the cheap real surrogate (2 distillation steps), every ε, both profiles, checked against the exhaustive front
for prof in avx512-cpu scalar-cpu; do for eps in 0.05 0.1 0.25; do
nice -n 19 bortengine extract --space minilm --profile runs/extract/profile-minilm-$prof.json --batch 1 --seq 128 --threads 1 \
  --surrogate distill --steps 2 --surrogate-batch 8 --max-length 32 --eval-sentences 32 --eps $eps --verify --measure 0 \
  --cache runs/extract/cache --time-budget 60 --no-progress --representative ${REP:-source-heads} --out runs/extract/${REP:-source-heads}-minilm-cheap-$prof-$eps 2>&1 | grep -E "candidates|verification|winner ⟨" | sed "s/^/$prof $eps: /" | cut -c1-220
done; done
