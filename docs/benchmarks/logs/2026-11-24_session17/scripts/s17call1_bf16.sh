#!/usr/bin/env bash
# Session 17, call 1: the residual stream and its gradients in bf16 (was fp32). GPU tests of the
# kernels, the model, TTT, eval and training on the new build; the step, HEAD's binary
# (pgolf_base) and the new one (pgolf_bf16) alternately; 200 training steps of each on the
# sample (the loss curves side by side); an ncu profile of the new step's kernels.
set -u
D=$OUT/c; mkdir -p $D
B=.bench
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader | tee $D/summary.txt
timeout 330 build/pgolf_tests -tc='kernel*,model cuda*,ttt cuda*,train cuda*' > $D/tests.log 2>&1
echo "tests rc=$?" | tee -a $D/summary.txt
tail -3 $D/tests.log | tee -a $D/summary.txt
grep -B2 -A8 "ERROR" $D/tests.log | head -60 >> $D/summary.txt
for i in 1 2 3; do for b in pgolf_base pgolf_bf16; do
  echo "== $b run $i" >> $D/ab_bench_model.log
  timeout 120 $B/$b bench model --rows 24 --recur both >> $D/ab_bench_model.log 2>&1
done; done
grep -E "^==|    24" $D/ab_bench_model.log >> $D/summary.txt
for b in pgolf_base pgolf_bf16; do
  timeout 120 $B/$b train --preset record --data data/sample_sp8192 --vocab-size 8192 --batch-tokens 49152 \
    --micro-batch-seqs 24 --iterations 200 --max-wallclock 0 --recur-from 0 --qat-from 1 --log-every 10 \
    --val-every 0 --val-tokens 65536 --out /tmp/tr_$b > $D/train_$b.log 2>&1
  echo "train $b rc=$?" >> $D/summary.txt
done
paste <(grep -E "^step [0-9]+ loss" $D/train_pgolf_base.log | awk '{print $2, $4}') \
      <(grep -E "^step [0-9]+ loss" $D/train_pgolf_bf16.log | awk '{print $4}') > $D/loss_curves.txt
echo "step fp32-stream bf16-stream" >> $D/summary.txt; cat $D/loss_curves.txt >> $D/summary.txt
timeout 200 ncu --profile-from-start off --clock-control none --metrics gpu__time_duration.sum,dram__bytes_read.sum,dram__bytes_write.sum --csv $B/pgolf_bf16 bench model --rows 24 --recur on --warmup 2 --reps 1 --profile 2> $D/ncu_stderr.txt | gzip > $D/step_ncu_bf16.csv.gz
python3 scripts/ncu_by_kernel.py <(zcat $D/step_ncu_bf16.csv.gz) > $D/by_kernel_bf16.txt
head -30 $D/by_kernel_bf16.txt >> $D/summary.txt
cat $D/summary.txt
