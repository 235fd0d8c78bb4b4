#!/bin/bash
# Regenerates the shipped profile and docs/profiler/*: run on a quiet machine (nothing else running).
cd "$(dirname "$0")/../.." && . .venv/bin/activate
D=${OUT:-/tmp/bortengine-ship}; mkdir -p $D; rm -f $D/*
P=$D/profile.json
uptime
for dt in float32 int8; do
  for sp in bort minilm; do
    /usr/bin/time -f "$sp $dt full profile wall %e s" bortengine profile --space $sp --dtype $dt --out $P --no-progress 2>&1 | grep -v "^profile bort\|^profile minilm"
  done
done
uptime
for dt in float32 int8; do
  for sp in bort minilm; do
    bortengine profile-validate --space $sp --dtype $dt --out $P --archs 16 --seed 0 --no-progress --plot $D/val_${sp}_${dt}.png --report $D/val_${sp}_${dt}.json
    uptime
  done
done
for dt in float32 int8; do
  /usr/bin/time -f "bort $dt quick profile wall %e s" bortengine profile --quick --space bort --dtype $dt --out $D/quick.json --no-progress
  bortengine profile-validate --space bort --dtype $dt --out $D/quick.json --archs 16 --seed 0 --no-progress --report $D/valquick_bort_$dt.json
  uptime
done
echo SHIP-DONE
