#!/usr/bin/env python3
"""Sums an Nsight Compute CSV (--metrics gpu__time_duration.sum --csv) by kernel name.

Template arguments, parameters and anonymous namespaces are dropped, so every launch of one
kernel counts together; cuBLASLt's nvjet and split-K kernels count as one line. Prints ms,
launches and share per kernel, largest first, then the total.
    ncu ... --csv build/pgolf bench model ... > step.csv
    python3 scripts/ncu_by_kernel.py step.csv        # or - for standard input
"""
import collections, csv, re, sys

src = sys.stdin if len(sys.argv) < 2 or sys.argv[1] == "-" else open(sys.argv[1])
header, total = None, collections.defaultdict(lambda: [0.0, 0])
for row in csv.reader(src):
    if "Kernel Name" in row:
        header = row
        continue
    if header is None or len(row) != len(header):
        continue  # the program's own output and ncu's notes
    rec = dict(zip(header, row))
    if rec.get("Metric Name") != "gpu__time_duration.sum":
        continue
    scale = {"ns": 1e-6, "nsecond": 1e-6, "us": 1e-3, "usecond": 1e-3, "ms": 1.0, "msecond": 1.0}
    scale = scale[rec["Metric Unit"]]
    name = rec["Kernel Name"].replace("(anonymous namespace)::", "").replace("<unnamed>::", "")
    name = re.split(r"[<(]", re.sub(r"^void ", "", name))[0]
    if name.startswith("nvjet") or "cublas" in name:
        name = "cuBLASLt GEMM (nvjet, split-K reduce)"
    total[name][0] += float(rec["Metric Value"].replace(",", "")) * scale
    total[name][1] += 1
if not total:
    sys.exit("ncu_by_kernel.py: no gpu__time_duration.sum rows in the input")
all_ms = sum(ms for ms, _ in total.values())
for name, (ms, n) in sorted(total.items(), key=lambda kv: -kv[1][0]):
    print(f"{ms:8.2f} ms {n:5d} launches {100 * ms / all_ms:5.1f}%  {name}")
print(f"{all_ms:8.2f} ms total")
