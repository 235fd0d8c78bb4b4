# The FPTAS against the exhaustive front with a cheap real surrogate (distillation from slice-init, STEPS steps,
# seed SEED), every ε, several profiles, maximum points and size objectives; K = PG evaluations per group
# (1: the plain FPTAS). Everything after the first exhaustive run of a surrogate comes from the cache.
# Then: python docs/extraction-example/table.py runs/extract/verify-*  (one table row per run)
set -u
STEPS=${STEPS:-2}; SEED=${SEED:-0}; PG=${PG:-3}
SHIPPED=src/bortengine/profiling/profiles/authenticamd-amd-epyc-f25m17s1-avx512-2cpu.json
tag=s$STEPS-seed$SEED-k$PG
run() {  # name, then extract arguments
  local name=$1; shift
  for eps in 0.05 0.1 0.25; do
    nice -n 19 bortengine extract --space minilm --batch 1 --seq 128 --surrogate distill --steps $STEPS --seed $SEED \
      --surrogate-batch 8 --max-length 32 --eval-sentences 32 --eps $eps --per-group $PG --verify --measure 0 \
      --cache runs/extract/cache --no-progress "$@" --out runs/extract/verify-$tag-$name-$eps 2>&1 \
      | grep -E "candidates|refinement|verification" | sed "s/^/$name $eps: /" | cut -c1-200
  done
}
run avx512 --profile runs/extract/profile-minilm-avx512-cpu.json --threads 1
run scalar --profile runs/extract/profile-minilm-scalar-cpu.json --threads 1
run shipped-fp32 --profile $SHIPPED --threads 2
run shipped-int8 --profile $SHIPPED --threads 2 --dtype int8
run avx512-max-6-8-384-1024 --profile runs/extract/profile-minilm-avx512-cpu.json --threads 1 --max-point 6,8,384,1024
run scalar-max-4-12-384-1536 --profile runs/extract/profile-minilm-scalar-cpu.json --threads 1 --max-point 4,12,384,1536
run avx512-total --profile runs/extract/profile-minilm-avx512-cpu.json --threads 1 --size total
