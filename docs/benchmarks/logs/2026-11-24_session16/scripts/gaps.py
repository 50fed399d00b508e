#!/usr/bin/env python3
"""Idle time between kernels in an nsys cuda_gpu_trace CSV (nsys stats --report cuda_gpu_trace).

Takes the last step: the kernels after the last gap of over 1 ms (the host's pause between
timed steps), and prints its span, the kernels' busy time, the gaps between consecutive
kernels, and the gaps after each kind of kernel, largest first."""
import collections, csv, sys

rows = []
for row in csv.DictReader(open(sys.argv[1])):
    name = row.get("Name", "")
    if not row.get("Start (ns)") or "memcpy" in name.lower() or "memset" in name.lower():
        continue
    start, dur = int(row["Start (ns)"]), int(row["Duration (ns)"])
    rows.append((start, start + dur, name))
rows.sort()
cut = 0
for i in range(1, len(rows)):
    if rows[i][0] - rows[i - 1][1] > 1_000_000:
        cut = i
step = rows[cut:]
busy = sum(e - s for s, e, _ in step)
span = step[-1][1] - step[0][0]
gaps = collections.defaultdict(lambda: [0, 0])
total_gap = 0
for a, b in zip(step, step[1:]):
    g = max(0, b[0] - a[1])
    total_gap += g
    k = (a[2].split("(")[0].split("<")[0][:40], b[2].split("(")[0].split("<")[0][:40])
    gaps[k][0] += g
    gaps[k][1] += 1
print(f"kernels {len(step)}  span {span / 1e6:.3f} ms  busy {busy / 1e6:.3f} ms  gaps {total_gap / 1e6:.3f} ms "
      f"({total_gap / max(1, len(step) - 1) / 1e3:.2f} us a boundary)")
for (a, b), (g, n) in sorted(gaps.items(), key=lambda kv: -kv[1][0])[:15]:
    print(f"  {g / 1e3:8.1f} us {n:4d}x {g / n / 1e3:6.2f} us  {a} -> {b}")
