#!/usr/bin/env python3
"""The real timeline of one step, from an nsys kernel trace (ncu runs kernels one at a time).

    nsys profile --capture-range=cudaProfilerApi --cuda-graph-trace=node --trace=cuda -o step \
        build/pgolf bench model --rows 24 --recur on --warmup 3 --reps 2 --profile
    nsys stats --report cuda_gpu_trace --format csv --output trace step.nsys-rep
    python3 scripts/nsys_timeline.py trace_cuda_gpu_trace.csv      # or a .csv.gz, or -

Prints the span from the first record's start to the last one's end; the time some kernel runs
(the union of their intervals) and the GPU's idle gaps; the summed durations, whose excess over
the union is the time kernels ran side by side; and per kernel its launches, summed time, and
mean duration alone and with another kernel beside it for over a fifth of its run. A graph's
nodes run on streams of the graph's own, so streams say little here; overlap is what counts.
"""
import collections, csv, gzip, re, sys


def short(name):
    name = re.sub(r"^void ", "", name.replace("(anonymous namespace)::", "").replace("<unnamed>::", ""))
    name = re.split(r"[(]", name)[0]
    if name.startswith("nvjet") or "cublas" in name:
        return "cuBLASLt " + re.sub(r"^nvjet_sm90_", "", name)[:48]
    return name[:70]


path = sys.argv[1] if len(sys.argv) > 1 else "-"
src = sys.stdin if path == "-" else gzip.open(path, "rt") if path.endswith(".gz") else open(path)
rows, header = [], None
for row in csv.reader(src):
    if header is None:
        if any(c.startswith("Start") for c in row) and "Name" in row:
            header = row
        continue
    if len(row) != len(header):
        continue
    rec = dict(zip(header, row))
    start = float(next(v for k, v in rec.items() if k.startswith("Start")))
    dur = float(next(v for k, v in rec.items() if k.startswith("Duration")))
    rows.append((start, start + dur, short(rec["Name"])))
if not rows:
    sys.exit("nsys_timeline.py: no rows with Start, Duration and Name columns in the input")
rows.sort()
t0, t1 = rows[0][0], max(e for _, e, _ in rows)

merged = []
for s, e, _ in rows:
    if merged and s <= merged[-1][1]:
        merged[-1][1] = max(merged[-1][1], e)
    else:
        merged.append([s, e])
busy = sum(e - s for s, e in merged)
gaps = [merged[i + 1][0] - merged[i][1] for i in range(len(merged) - 1)]
summed = sum(e - s for s, e, _ in rows)
print(f"span {1e-6 * (t1 - t0):.3f} ms, {len(rows)} records")
print(f"some kernel running {1e-6 * busy:.3f} ms; idle {1e-6 * (t1 - t0 - busy):.3f} ms in {len(gaps)} gaps "
      f"({sum(g > 5000 for g in gaps)} over 5 us)")
print(f"durations summed {1e-6 * summed:.3f} ms: {1e-6 * (summed - busy):.3f} ms more than the union, "
      f"time kernels ran side by side")

# Records overlap only their neighbours in start order (a step's kernels run one or two at a time).
stats = collections.defaultdict(lambda: [[], []])  # name: [alone, beside] durations
for i, (s, e, name) in enumerate(rows):
    o = 0.0
    for j in range(max(0, i - 64), min(len(rows), i + 64)):
        if j != i:
            o += max(0.0, min(e, rows[j][1]) - max(s, rows[j][0]))
    stats[name][o > 0.2 * (e - s)].append(e - s)
print("\nms summed, launches, mean us alone / beside another kernel (launches beside), kernel")
for name, (alone, beside) in sorted(stats.items(), key=lambda kv: -sum(kv[1][0]) - sum(kv[1][1])):
    a = f"{1e-3 * sum(alone) / len(alone):8.1f}" if alone else "       -"
    b = f"{1e-3 * sum(beside) / len(beside):8.1f}" if beside else "       -"
    print(f"{1e-6 * (sum(alone) + sum(beside)):8.3f} {len(alone) + len(beside):4d} {a} / {b} ({len(beside)})  {name}")
