import json, sys
for path in sys.argv[1:]:
    r = json.load(open(f"{path}/report.json")); s = r["summary"]; v = r["verification"] or {}
    prof = r["settings"]["profile"]["target"]["isa"]
    print(f"| {s['space']} | {prof} | {s['epsilon']} | {s['space_size']} | {s['groups']} | {s['bound']['groups']} ({s['bound']['closed_form']:.0f}) | {s['evaluations']} | {s['pareto_size']} | {v.get('covered')}/{v.get('reference_front')} | {v.get('worst_factor', 0):.4f} | {len(v.get('assumption_violations', []))} | {v.get('theorem_holds')} | ⟨{', '.join(map(str, s['winner']['arch']))}⟩ |")
