#!/bin/bash
# Session 25 calls 10-11: the final gpu_check of the commit, started in the background (call 10),
# then collected once its summary was written (call 11). Carry: build, data/sample_sp8192.
mkdir -p /tmp/gc && (OUT=/tmp/gc setsid nohup scripts/gpu_check.sh > /tmp/gc/gpu_check.out 2>&1 &); sleep 575
# call 11:
#   for i in $(seq 1 36); do grep -q "== summary" /tmp/gc/gpu_check.out && break; sleep 10; done
#   cd /tmp/gc && tar czf $OUT/gc.tgz *.log gpu_check.out
