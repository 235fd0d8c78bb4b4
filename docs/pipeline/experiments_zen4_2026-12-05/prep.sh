# prep.sh SRC DST: a copy of a finished pipeline run with distil, finetune and evaluate undone
set -e
SRC=$1; DST=$2
rm -rf $DST; mkdir -p $DST
cp -r $SRC/teacher $SRC/teacher-run $SRC/extract-cache $SRC/extract-measured.json $SRC/profile.json $SRC/splits.json $DST/ 2>/dev/null || true
sed "s#^out = .*#out = \"$DST\"#" $SRC/pipeline.toml > $DST/pipeline.toml
python3 - $SRC $DST <<'PY'
import json, sys
d = json.load(open(sys.argv[1] + "/pipeline.json"))
d["stages"] = {k: v for k, v in d["stages"].items() if k in ("profile", "teacher", "extract")}
json.dump(d, open(sys.argv[2] + "/pipeline.json", "w"), indent=1)
PY
