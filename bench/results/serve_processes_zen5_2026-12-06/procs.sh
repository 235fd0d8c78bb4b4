#!/bin/bash
# usage: procs.sh DTYPE N: N `bortengine serve` processes of 2/N threads each (ports 18901...), wrk at 32/N
# connections on each at once for 8 s (after 3 s of warm-up), total requests/s; BODIES=... for other texts
cd "$(dirname "$0")/../../.."   # the repository
M=$(.venv/bin/python -c "from bortengine.testing import minilm_path; print(minilm_path())"); B=${BODIES:-bench/.cache/serve/bodies-queries.jsonl}
N=$2; T=$((2 / N)); C=$((32 / N)); PIDS=""
for k in $(seq $N); do .venv/bin/python -m bortengine serve $M --port $((18900 + k)) --dtype $1 --threads $T > /tmp/sp$k.log 2>&1 & PIDS="$PIDS $!"; done
for k in $(seq $N); do for i in $(seq 60); do curl -s 127.0.0.1:$((18900 + k))/health | grep -q ok && break; sleep 0.5; done; done
WP=""; for k in $(seq $N); do wrk -t1 -c$C -d3s -s bench/wrk_post.lua http://127.0.0.1:$((18900 + k))/v1/embeddings -- $B > /dev/null & WP="$WP $!"; done; wait $WP
WP=""; for k in $(seq $N); do wrk -t1 -c$C -d8s -s bench/wrk_post.lua http://127.0.0.1:$((18900 + k))/v1/embeddings -- $B > /tmp/wo$k.txt & WP="$WP $!"; done; wait $WP
TOT=0; for k in $(seq $N); do R=$(grep -o '"requests": [0-9]*' /tmp/wo$k.txt | grep -o '[0-9]*'); TOT=$((TOT + R)); done
echo "$1 processes=$N threads_each=$T rps=$((TOT / 8))"
kill $PIDS; wait $PIDS 2>/dev/null
