#!/bin/bash
# usage: ab.sh WORKERS [LABEL]: `bortengine serve --workers WORKERS` (threads shared out: 2/WORKERS each), 6-token
# queries (BODIES=... for others), DT=int8|float32, wrk at 32 connections for 8 s after 3 s of warm-up: requests/s,
# latency percentiles, and how the connections were spread (requests per worker, from each worker's own count)
cd "$(dirname "$0")/../../.."   # the repository
PORT=$((18500 + RANDOM % 1000)); W=$1; LOG=$(mktemp)
M=$(.venv/bin/python -c "from bortengine.testing import minilm_path; print(minilm_path())")
env ${EXTRA_ENV:-X=1} .venv/bin/python -m bortengine serve $M --port $PORT --dtype ${DT:-int8} --workers $W > $LOG 2>&1 &
SP=$!
for i in $(seq 60); do grep -q "ready:" $LOG && break; sleep 0.5; done
wrk -t1 -c32 -d3s -s bench/wrk_post.lua http://127.0.0.1:$PORT/v1/embeddings -- ${BODIES:-bench/.cache/serve/bodies-queries.jsonl} > /dev/null
OUT=$(wrk -t1 -c32 -d8s --latency -s bench/wrk_post.lua http://127.0.0.1:$PORT/v1/embeddings -- ${BODIES:-bench/.cache/serve/bodies-queries.jsonl})
R=$(echo "$OUT" | grep -o '"requests": [0-9]*' | grep -o '[0-9]*')
LAT=$(echo "$OUT" | grep -E "^ +(50|99)%" | awk '{printf "p%s=%s ", $1, $2}')
echo "${DT:-int8} workers=$W ${2:-} rps=$((R/8)) $LAT errors=$(echo "$OUT" | grep -o '"errors": [0-9]*' | grep -o '[0-9]*$')"
kill $SP; wait $SP 2>/dev/null; rm -f $LOG
