# prep.sh SRC DST: a copy of a finished pipeline run with distil, finetune and evaluate undone
set -e
SRC=$1; DST=$2
for required in teacher profile.json pipeline.json pipeline.toml; do
  [ -e "$SRC/$required" ] || { echo "prep.sh: $SRC has no $required: not a run past its extraction" >&2; exit 1; }
done
rm -rf $DST; mkdir -p $DST
for kept in teacher teacher-run extract-cache extract-measured.json profile.json splits.json; do
  if [ -e "$SRC/$kept" ]; then cp -r "$SRC/$kept" $DST/; fi   # splits.json only when dev was cut from train
done
sed "s#^out = .*#out = \"$DST\"#" $SRC/pipeline.toml > $DST/pipeline.toml
python3 - $SRC $DST <<'PY'
import json, sys
d = json.load(open(sys.argv[1] + "/pipeline.json"))
d["stages"] = {k: v for k, v in d["stages"].items() if k in ("profile", "teacher", "extract")}
json.dump(d, open(sys.argv[2] + "/pipeline.json", "w"), indent=1)
PY
