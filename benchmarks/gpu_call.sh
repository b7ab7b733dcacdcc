#!/usr/bin/env bash
# The one prepared call for a lent GPU (issues 31 and 32): the chapter as a Colab user runs it first
# (benchmarks/colab_session.sh, a share of the budget), then every capstone measurement with the time left
# (benchmarks/gpu_session.sh). Seven files come back from $OUT: colab.jsonl, colab.log, session.log,
# throughput.txt, throughput.json, sweep.csv, meta.json.
#
#   run(command="OUT=$OUT BUDGET=560 KLTUTOR_COMMIT=$(git rev-parse HEAD) bash benchmarks/gpu_call.sh",
#       carry=[".whl", ".whl-colab"], timeout_s=600)
#   REHEARSAL=1 COLAB_PY=.venv/bin/python PY=.venv-trainers/bin/python OUT=/tmp/gpu_out BUDGET=900 bash benchmarks/gpu_call.sh   # CPU
# COLAB_PY: the Python of the Colab-like part (default $PY; here one with papermill, which the trainers' venv lacks).
set -u
OUT=${OUT:-gpu_out}
BUDGET=${BUDGET:-560}
COLAB_SHARE=${COLAB_SHARE:-40}  # percent of the budget for the Colab-like runs
start=$(date +%s)
colab=$(( BUDGET * COLAB_SHARE / 100 ))
PY=${COLAB_PY:-${PY:-python3}} OUT=$OUT BUDGET=$colab bash benchmarks/colab_session.sh
rest=$(( BUDGET - ($(date +%s) - start) ))
OUT=$OUT BUDGET=$rest bash benchmarks/gpu_session.sh
