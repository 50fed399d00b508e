#!/bin/bash
# Session 25 call 9: call 7's build, the kernel and model tests six times (fresh seeds each), the
# context of every failed check kept (errors.log). The call ran out of its 600 s in run 6.
mkdir -p $OUT
for r in 1 2 3 4 5 6; do
  timeout 120 build/pgolf_tests -tc='*kernel*,*odel*' > /tmp/r$r.log 2>&1
  echo "run $r: $(grep -c 'ERROR:' /tmp/r$r.log) errors, $(tail -2 /tmp/r$r.log | head -1)"
  grep -B4 -A20 "ERROR:" /tmp/r$r.log | head -60 >> $OUT/errors.log
done
head -120 $OUT/errors.log
