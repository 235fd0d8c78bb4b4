"""One markdown table row per extraction report given (directories holding report.json from --verify runs)."""
import json
import sys

print("| surrogate | profile | maximum point | size | ε | K | candidates | groups | evaluations (refinement) | bound min(space, K·n_p·n_l+1) "
      "| front covered | worst factor | A_ε violations | winner |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
for path in sys.argv[1:]:
    r = json.load(open(f"{path}/report.json"))
    s, st, v = r["summary"], r["settings"], r["verification"] or {}
    sur = st["surrogate"]["settings"]
    name = (f"{sur['steps']} steps, seed {sur['seed']}" if st["surrogate"]["name"] == "distill"
            else st["surrogate"]["name"])
    w = st["workload"]
    prof = f"{st['profile']['target']['isa']} {w['num_threads']}t {w['dtype']}"
    ref = s.get("refinement") or {"per_group": 1, "evaluations": 0}
    cov = f"{v.get('covered')}/{v.get('reference_front')}"
    if v and v["covered"] == v["reference_front"]:
        cov = f"**{cov}**"
    print(f"| {name} | {prof} | ⟨{', '.join(map(str, s['max_point']['arch']))}⟩ "
          f"| {st['size_objective']} | {s['epsilon']} | {ref['per_group']} | {s['space_size']} | {s['groups']} "
          f"| {s['evaluations']} ({ref['evaluations']}) | {s['bound']['evaluations']} ({s['bound'].get('polynomial', '–')}) | {cov} "
          f"| {v.get('worst_factor', 0):.4f} | {len(v.get('assumption_violations', []))} "
          f"| ⟨{', '.join(map(str, s['winner']['arch']))}⟩ |")
