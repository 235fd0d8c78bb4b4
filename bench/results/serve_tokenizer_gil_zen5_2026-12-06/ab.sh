#!/bin/bash
# usage: ab2.sh SRC_DIR LABEL  — served int8 queries, wrk c=32, per-request loop CPU
cd /work/main
PORT=$((18500 + RANDOM % 1000))
PYTHONPATH=$1 nice -n ${NICE:-19} .venv/bin/python -m bortengine serve $(.venv/bin/python -c "from bortengine.testing import minilm_path; print(minilm_path())") --port $PORT --dtype ${DT:-int8} --threads 2 > /tmp/serve.log 2>&1 &
SP=$!
for i in $(seq 60); do curl -s 127.0.0.1:$PORT/health | grep -q ok && break; sleep 0.5; done
nice -n ${NICE:-19} wrk -t1 -c32 -d3s -s bench/wrk_post.lua http://127.0.0.1:$PORT/v1/embeddings -- ${BODIES:-/tmp/bodies.txt} > /dev/null
a=$(awk '{print $14+$15}' /proc/$SP/task/$SP/stat); all_a=$(awk '{print $14+$15}' /proc/$SP/stat)
R=$(nice -n ${NICE:-19} wrk -t1 -c32 -d8s -s bench/wrk_post.lua http://127.0.0.1:$PORT/v1/embeddings -- ${BODIES:-/tmp/bodies.txt} | grep -o '"requests": [0-9]*' | grep -o '[0-9]*')
b=$(awk '{print $14+$15}' /proc/$SP/task/$SP/stat); all_b=$(awk '{print $14+$15}' /proc/$SP/stat)
echo "$2 requests=$R rps=$((R/8)) loop_us_per_req=$(( (b-a)*10000000/R/1000 )) proc_us_per_req=$(( (all_b-all_a)*10000000/R/1000 ))"
kill $SP; wait $SP 2>/dev/null
