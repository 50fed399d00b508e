#!/usr/bin/env bash
# Session 19, call 4: where the slab kernel (pgolf_slab, call 1) waits, against HEAD's
# (pgolf_base): one forward and one backward launch each under ncu (speed of light, warp states,
# scheduler, memory) with the instructions where warps stall most. (The SASS dump at its end
# matched nothing and was dropped; call 5 dumps the SASS.)
set -u
D=$OUT; mkdir -p $D
B=.bench
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader | tee $D/summary.txt
for b in pgolf_base pgolf_slab; do
  echo "== $b" >> $D/summary.txt
  timeout 60 $B/$b bench mlp | grep -E "fused|RESULT" >> $D/summary.txt
done
for b in pgolf_base pgolf_slab; do for f in UpForward DownBackward; do
  timeout 120 ncu --kernel-name-base demangled --kernel-name regex:$f --launch-skip 3 --launch-count 1 \
    --section SpeedOfLight --section WarpStateStats --section SchedulerStats --section MemoryWorkloadAnalysis \
    --section SourceCounters --import-source no -o /tmp/${b}_$f -f $B/$b bench mlp --warmup 2 --reps 3 > /dev/null 2>&1
  ncu --import /tmp/${b}_$f.ncu-rep --page details > $D/ncu_${b}_$f.txt 2>&1
  ncu --import /tmp/${b}_$f.ncu-rep --page source --csv --print-source sass > /tmp/src_${b}_$f.csv 2>&1
  python3 - /tmp/src_${b}_$f.csv >> $D/ncu_${b}_$f.txt <<'PY'
import csv, sys
rows = list(csv.reader(open(sys.argv[1])))
hdr_i = next(i for i, r in enumerate(rows) if any("Warp Stall Sampling (All" in c for c in r))
hdr = rows[hdr_i]
col = next(i for i, c in enumerate(hdr) if c.startswith("Warp Stall Sampling (All"))
src = next((i for i, c in enumerate(hdr) if c.lower() in ("source", "sass")), 1)
body = [r for r in rows[hdr_i + 1:] if len(r) == len(hdr)]
def num(x):
    try: return float(x.replace(",", ""))
    except ValueError: return 0.0
total = sum(num(r[col]) for r in body)
print(f"columns: {hdr}")
print(f"total stall samples {total:.0f}")
for r in sorted(body, key=lambda r: -num(r[col]))[:40]:
    extra = " | ".join(f"{h}={r[i]}" for i, h in enumerate(hdr) if "Stall" in h and "Not" not in h and i != col and num(r[i]) > 0.05 * num(r[col]))
    print(f"{num(r[col]) / total * 100:5.1f}%  {r[0]:>6}  {r[src][:70]:70}  {extra[:300]}")
PY
done; done
grep -h -E "Duration|Compute \(SM\) Throughput|Memory Throughput|DRAM Throughput|Issue Slots Busy|No Eligible|Warp Cycles Per Issued" $D/ncu_*.txt >> $D/summary.txt
CUOBJ=$(command -v cuobjdump || echo /usr/local/cuda/bin/cuobjdump)
$CUOBJ -sass -fun regex:UpForward $B/pgolf_slab > /tmp/sass_slab_up.txt 2>&1; echo "cuobjdump rc=$? lines $(wc -l < /tmp/sass_slab_up.txt)" >> $D/summary.txt
gzip -c /tmp/sass_slab_up.txt > $D/sass_slab_UpForward.txt.gz
cat $D/summary.txt
