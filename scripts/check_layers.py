#!/usr/bin/python3
"""layers: the object files of one target call each other one way only
(usage: check_layers.py ORDER OBJECT... ; ORDER is a comma list, may be
empty; an OBJECT may be a directory of .o files).

Reads each object's defined and undefined symbols with nm, draws an edge
A -> B when A uses a symbol B defines, and fails on any cycle. With ORDER
(object base names, e.g. sim_main,sim_batch,sim_http,sim_gen), every edge
must also point later in that order. Exits 77 when nm is missing."""
import os
import shutil
import subprocess
import sys

if not shutil.which("nm"):
    print("layers: nm not found", file=sys.stderr)
    sys.exit(77)
order = [n for n in sys.argv[1].split(",") if n]
objs = []
#  CMake passes $<TARGET_OBJECTS:...> as one ;-separated argument.
for arg in [a for args in sys.argv[2:] for a in args.split(";") if a]:
    if os.path.isdir(arg):
        objs += sorted(os.path.join(arg, f) for f in os.listdir(arg) if f.endswith(".o"))
    else:
        objs.append(arg)
defined, used = {}, {}
for o in objs:
    name = os.path.basename(o).split(".")[0]
    out = subprocess.run(["nm", o], capture_output=True,
                         text=True, check=True).stdout
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == "U":
            used.setdefault(name, set()).add(parts[1])
        elif len(parts) == 3 and parts[1] in "TDBR":
            defined[parts[2]] = name
edges = {}
for a, syms in used.items():
    for s in syms:
        b = defined.get(s)
        if b and b != a:
            edges.setdefault(a, set()).add(b)
errors = []
rank = {n: i for i, n in enumerate(order)}
for a, bs in sorted(edges.items()):
    for b in sorted(bs):
        if a in rank and b in rank and rank[b] <= rank[a]:
            errors.append("%s -> %s goes against %s" % (a, b, " -> ".join(order)))


def cycle_from(node, path, seen):
    for b in sorted(edges.get(node, ())):
        if b in path:
            return path[path.index(b):] + [b]
        if b not in seen:
            seen.add(b)
            c = cycle_from(b, path + [b], seen)
            if c:
                return c
    return None


seen = set()
for n in sorted(edges):
    c = cycle_from(n, [n], seen)
    if c:
        errors.append("cycle: " + " -> ".join(c))
        break
for e in errors:
    print("layers: " + e, file=sys.stderr)
if not errors:
    print("layers: %d objects, %d edges, one way: %s" % (
        len(objs), sum(len(v) for v in edges.values()),
        "; ".join("%s -> %s" % (a, ",".join(sorted(bs))) for a, bs in sorted(edges.items()))))
sys.exit(1 if errors else 0)
