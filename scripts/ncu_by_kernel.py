#!/usr/bin/env python3
"""Sums an Nsight Compute CSV (--metrics gpu__time_duration.sum --csv) by kernel name.

Template arguments, parameters and anonymous namespaces are dropped, so every launch of one
kernel counts together; cuBLASLt's nvjet and split-K kernels count as one line. Prints ms,
launches and share per kernel, largest first, then the total. When the CSV also has
dram__bytes_read.sum and dram__bytes_write.sum, each line adds the kernel's DRAM traffic and
its mean rate, which says how far a memory-bound kernel is from the bandwidth.
With --launches REGEX it prints, instead, one line per launch of the kernels whose full name
matches REGEX, in launch order: its time, DRAM traffic and rate, and its template arguments.
    ncu ... --csv build/pgolf bench model ... > step.csv
    python3 scripts/ncu_by_kernel.py step.csv        # or - for standard input
    python3 scripts/ncu_by_kernel.py step.csv --launches residual_backward
"""
import collections, csv, re, sys

args = sys.argv[1:]
launches = None
if "--launches" in args:
    i = args.index("--launches")
    launches = re.compile(args[i + 1])
    del args[i : i + 2]
src = sys.stdin if not args or args[0] == "-" else open(args[0])
header = None
total = collections.defaultdict(lambda: [0.0, 0])  # ms, launches
dram = collections.defaultdict(float)  # bytes
per_launch = collections.defaultdict(dict)  # (ID, name): {"ms": , "bytes": }
for row in csv.reader(src):
    if "Kernel Name" in row:
        header = row
        continue
    if header is None or len(row) != len(header):
        continue  # the program's own output and ncu's notes
    rec = dict(zip(header, row))
    metric = rec.get("Metric Name")
    if metric not in ("gpu__time_duration.sum", "dram__bytes_read.sum", "dram__bytes_write.sum"):
        continue
    name = rec["Kernel Name"].replace("(anonymous namespace)::", "").replace("<unnamed>::", "")
    full = re.sub(r"^void ", "", name.split("(")[0])
    name = re.split(r"[<(]", re.sub(r"^void ", "", name))[0]
    if name.startswith("nvjet") or "cublas" in name:
        name = "cuBLASLt GEMM (nvjet, split-K reduce)"
    value = float(rec["Metric Value"].replace(",", ""))
    launch = per_launch[(int(rec["ID"]), full)] if launches and launches.search(full) else {}
    if metric.startswith("dram"):
        units = {"byte": 1, "Kbyte": 1e3, "Mbyte": 1e6, "Gbyte": 1e9, "KB": 1e3, "MB": 1e6, "GB": 1e9}
        dram[name] += value * units[rec["Metric Unit"]]
        launch["bytes"] = launch.get("bytes", 0.0) + value * units[rec["Metric Unit"]]
        continue
    scale = {"ns": 1e-6, "nsecond": 1e-6, "us": 1e-3, "usecond": 1e-3, "ms": 1.0, "msecond": 1.0}
    total[name][0] += value * scale[rec["Metric Unit"]]
    total[name][1] += 1
    launch["ms"] = value * scale[rec["Metric Unit"]]
if not total:
    sys.exit("ncu_by_kernel.py: no gpu__time_duration.sum rows in the input")
if launches:
    for (i, full), m in sorted(per_launch.items()):
        ms, b = m.get("ms", 0.0), m.get("bytes", 0.0)
        rate = f" {b / ms / 1e6:6.0f} GB/s" if ms and b else ""
        print(f"{i:5d} {1e3 * ms:8.1f} us {b / 1e6:8.1f} MB{rate}  {full}")
    sys.exit(0)
all_ms = sum(ms for ms, _ in total.values())
for name, (ms, n) in sorted(total.items(), key=lambda kv: -kv[1][0]):
    traffic = f"  {dram[name] / 1e9:7.2f} GB {dram[name] / ms / 1e6:6.0f} GB/s" if dram else ""
    print(f"{ms:8.2f} ms {n:5d} launches {100 * ms / all_ms:5.1f}%{traffic}  {name}")
print(f"{all_ms:8.2f} ms total")
