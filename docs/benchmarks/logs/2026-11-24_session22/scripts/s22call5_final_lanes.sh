#!/bin/bash
# Session 22, call 5: the committed form (one stream per Muon bank): the optimizer, model, train
# and dist tests, the optimizer's timing case, then the step at 2, 4, 8 and 16 hardware queues
# (CUDA_DEVICE_MAX_CONNECTIONS; call 3 had the forward 0.45 ms slower at 32 than at 8).
set -o pipefail
mkdir -p $OUT
build/pgolf_tests -tc='*optim*,*odel*,*train*,*dist*' 2>&1 | tail -5 | tee $OUT/tests.log
build/pgolf_tests -tc='optim cuda: record-layout step time' --no-skip 2>&1 | grep -E "RESULT|step|record" | tee $OUT/opt_time.log
for round in 1 2; do
  for conn in 2 4 8 16; do
    echo "== connections $conn round $round"
    CUDA_DEVICE_MAX_CONNECTIONS=$conn build/pgolf bench model --rows 24 --recur both | grep -E "^ +24"
  done
done 2>&1 | tee $OUT/connections.log
