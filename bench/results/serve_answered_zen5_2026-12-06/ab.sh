#!/bin/bash
# usage: ab.sh SRC_DIR LABEL: `bortengine serve` from SRC_DIR (a source tree's src), int8 6-token queries, wrk at 32
# connections for 8 s: requests/s, and the CPU of the event loop's thread and of the process per request (DT=float32)
cd "$(dirname "$0")/../../.."   # the repository
PORT=$((18500 + RANDOM % 1000))
PYTHONPATH=$1 .venv/bin/python -m bortengine serve $(.venv/bin/python -c "from bortengine.testing import minilm_path; print(minilm_path())") --port $PORT --dtype ${DT:-int8} --threads 2 > /tmp/serve_$2.log 2>&1 &
SP=$!
for i in $(seq 60); do curl -s 127.0.0.1:$PORT/health | grep -q ok && break; sleep 0.5; done
wrk -t1 -c32 -d3s -s bench/wrk_post.lua http://127.0.0.1:$PORT/v1/embeddings -- ${BODIES:-bench/.cache/serve/bodies-queries.jsonl} > /dev/null
a=$(awk '{print $14+$15}' /proc/$SP/task/$SP/stat); all_a=$(awk '{print $14+$15}' /proc/$SP/stat)
R=$(wrk -t1 -c32 -d8s -s bench/wrk_post.lua http://127.0.0.1:$PORT/v1/embeddings -- ${BODIES:-bench/.cache/serve/bodies-queries.jsonl} | grep -o '"requests": [0-9]*' | grep -o '[0-9]*')
b=$(awk '{print $14+$15}' /proc/$SP/task/$SP/stat); all_b=$(awk '{print $14+$15}' /proc/$SP/stat)
echo "$2 requests=$R rps=$((R/8)) loop_us_per_req=$(( (b-a)*10000000/R/1000 )) proc_us_per_req=$(( (all_b-all_a)*10000000/R/1000 ))"
kill $SP; wait $SP 2>/dev/null
