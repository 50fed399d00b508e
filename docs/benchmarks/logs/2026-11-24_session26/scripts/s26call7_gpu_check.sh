#!/bin/bash
# Session 26 calls 7-8: scripts/gpu_check.sh on e0824bb (started detached in call 7, polled in
# call 8), then ncu of the step by kernel, the profile of the commit.
mkdir -p /tmp/gc && (OUT=/tmp/gc setsid nohup scripts/gpu_check.sh > /tmp/gc/gpu_check.out 2>&1 &)
