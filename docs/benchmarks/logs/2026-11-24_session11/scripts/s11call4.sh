#!/usr/bin/env bash
# Session 11, final call(s): scripts/gpu_check.sh detached; then the step against HEAD
# (pgolf_base), alternating, and one ncu step profile. Waits up to $1 seconds; call again to
# keep waiting.
if [ ! -f /tmp/gc.started ]; then
  touch /tmp/gc.started
  OUT=/tmp/gpu_check setsid nohup scripts/gpu_check.sh > /tmp/gc.log 2>&1 < /dev/null &
fi
end=$((SECONDS + $1))
while [ $SECONDS -lt $end ] && ! grep -q "^== summary" /tmp/gc.log; do sleep 10; done
tail -22 /tmp/gc.log
if grep -q "^== summary" /tmp/gc.log; then
  sleep 5
  cp /tmp/gc.log /tmp/gpu_check/summary.log
  if [ ! -f /tmp/gpu_check/ab_done ]; then
    for i in 1 2 3; do
      for b in pgolf_base pgolf; do
        echo "== $b run $i" >> /tmp/gpu_check/ab_bench_model.log
        build/$b bench model --rows 24 --recur both >> /tmp/gpu_check/ab_bench_model.log 2>&1
      done
    done
    touch /tmp/gpu_check/ab_done
  fi
  grep -E "^==|    24" /tmp/gpu_check/ab_bench_model.log
  if [ ! -f /tmp/gpu_check/by_kernel.txt ] && [ $((end - SECONDS)) -gt 60 ]; then
    ncu --profile-from-start off --clock-control none --metrics gpu__time_duration.sum,dram__bytes_read.sum,dram__bytes_write.sum --csv \
      build/pgolf bench model --rows 24 --recur on --warmup 2 --reps 1 --profile > /tmp/step.csv 2>&1
    gzip -c /tmp/step.csv > /tmp/gpu_check/step_ncu.csv.gz
    scripts/ncu_by_kernel.py /tmp/step.csv > /tmp/gpu_check/by_kernel.txt
    head -14 /tmp/gpu_check/by_kernel.txt; tail -1 /tmp/gpu_check/by_kernel.txt
  fi
  mkdir -p $OUT; tar czf $OUT/gpu_check.tgz -C /tmp gpu_check
fi
