"""Hardware awareness: the winners under two profiles, and what each profile's latency table says of both."""
import json, sys, math
a, b = sys.argv[1], sys.argv[2]
ra, rb = (json.load(open(f"{x}/report.json")) for x in (a, b))
def cands(r): return {tuple(c["arch"]): c for c in r["candidates"]}
ca, cb = cands(ra), cands(rb)
wa, wb = tuple(ra["summary"]["winner"]["arch"]), tuple(rb["summary"]["winner"]["arch"])
print(f"profiles: A={ra['settings']['profile']['target']['isa']} ({a}), B={rb['settings']['profile']['target']['isa']} ({b})")
print(f"winner A {wa}, winner B {wb}, same={wa == wb}")
def W(r, c):
    m = r["summary"]["max_point"]; tau = r["settings"]["tau"]
    if c["error"] is None: return None
    d = c["error"]-m["error"]
    return 0.5*math.log(m["params"]/c["params"]) + 0.5*math.log(m["latency_ms"]/c["latency_ms"]) - d*abs(d)/tau**2
print(f"{'arch':<22}{'params':>11}{'lat A ms':>10}{'lat B ms':>10}{'B/A':>7}{'error':>9}{'W under A':>11}{'W under B':>11}")
d, _, h, i = wa
rows = sorted({wa, wb} | {x for x in ca if x[0] == d and x[2] == h and x[3] == i} | {x for x in ca if x[0] == wb[0] and x[2] == wb[2] and x[3] == wb[3]})
for x in rows:
    A, B = ca[x], cb[x]
    err = A["error"] if A["error"] is not None else B["error"]
    evA, evB = A["error"] is not None, B["error"] is not None
    fa = dict(A, error=err); fb = dict(B, error=err)
    wA = W(ra, fa) if err is not None else None; wB = W(rb, fb) if err is not None else None
    f = lambda v: f"{v:11.3f}" if v is not None else f"{'-':>11}"
    e = f"{err:9.4f}" if err is not None else f"{'-':>9}"
    tag = (" <- A" if x == wa else "") + (" <- B" if x == wb else "") + f"  evaluated in A:{'y' if evA else 'n'} B:{'y' if evB else 'n'}"
    print(f"{str(x):<22}{A['params']:>11,}{A['latency_ms']:10.3f}{B['latency_ms']:10.3f}{B['latency_ms']/A['latency_ms']:7.1f}{e}{f(wA)}{f(wB)}{tag}")
from bortengine.profiler import kendall_tau
keys = sorted(ca)
print(f"Kendall tau of the two profiles' predicted latencies over the {len(keys)} candidates: "
      f"{kendall_tau([ca[k]['latency_ms'] for k in keys], [cb[k]['latency_ms'] for k in keys]):.3f}")
fa = {k for k in keys if ca[k]["pareto"]}; fb = {k for k in keys if cb[k]["pareto"]}
print(f"ε-Pareto sets: A {len(fa)}, B {len(fb)}, shared {len(fa & fb)}")
