"""force_arch.py RUN D,A,H,I: the student of a copy made by prep.sh becomes <D,A,H,I> (the extraction's result is
edited; profile, teacher and the extraction's cache are kept), so that `bortengine pipeline --config RUN/pipeline.toml`
distils, fine-tunes and evaluates that student with the run's own stage budgets."""
import json
import sys

run, dims = sys.argv[1], [int(x) for x in sys.argv[2].split(",")]
path = f"{run}/pipeline.json"
state = json.load(open(path))
result = state["stages"]["extract"]["result"]
result["architecture"].update(zip(("layers", "heads", "hidden", "intermediate"), dims))
result["note"] = f"experiment: architecture forced to <{sys.argv[2]}>"
json.dump(state, open(path, "w"), indent=1)
print(result["architecture"])
