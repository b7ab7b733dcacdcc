#!/usr/bin/env bash
# Every GPU measurement of the book in one prepared call (issue 20): a lent GPU machine is short-lived,
# so this script does it all under one time budget and writes every result under $OUT as it goes.
#
#   OUT=gpu_out BUDGET=560 bash benchmarks/gpu_session.sh          # on the GPU machine (python3 with torch + CUDA)
#   REHEARSAL=1 PY=/work/venv-trl/bin/python OUT=/tmp/gpu_out bash benchmarks/gpu_session.sh   # CPU rehearsal, tiny sizes
#
# Parts, in order (each under its own timeout; a failed part is logged and the next one runs):
#   1. wheels (.whl/*.whl: TRL and the packages it needs that the machine lacks) into /tmp/site;
#   2. the h100 preset's SFT reference, trained in the background while 3-4 run (they time nothing);
#   3. the sampler against a transformers forward in every decode mode (benchmarks/capstone_throughput.py --quick);
#   4. the capstone CLI on CUDA: a 6-step run, and the same cut at 3 and resumed (metrics compared);
#   5. capstone vs TRL GRPOTrainer, alternating in one process (benchmarks/capstone_throughput.py);
#   6. chunked vs naive log-probs at vocabulary 151,936 (benchmarks/logprob_memory.py);
#   7. the placement sweep in parallel workers until the budget runs out (benchmarks/capstone_gpu_sweep.py).
set -u
OUT=${OUT:-gpu_out}
BUDGET=${BUDGET:-560}
PY=${PY:-python3}
mkdir -p "$OUT"
start=$(date +%s)
elapsed() { echo $(( $(date +%s) - start )); }
left() { echo $(( BUDGET - $(elapsed) )); }
log() { echo "[$(elapsed) s] $*" | tee -a "$OUT/session.log"; }
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1 KLTUTOR_CACHE=${KLTUTOR_CACHE:-/tmp/kltutor-cache}
export PYTHONPATH="$PWD:/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
if [ -n "${REHEARSAL:-}" ]; then
  DEV=cpu; PRESET=smoke; SWEEP_STEPS=4; WORKERS=2; QUICK_T=300; CLI_T=400; TP_ARGS="--steps 2 --warmup 1"; MEM_ARGS="--tokens 256 --chunk 64"
else
  DEV=cuda; PRESET=h100; SWEEP_STEPS=${SWEEP_STEPS:-200}; WORKERS=${WORKERS:-12}; QUICK_T=150; CLI_T=90; TP_ARGS=""; MEM_ARGS=""
fi

log "part 1: environment and wheels"
{ nvidia-smi 2>&1 | head -20; $PY -c "import torch, transformers, sys; print(sys.version); print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available()); print('transformers', transformers.__version__)"; } >> "$OUT/session.log" 2>&1
if ls .whl/*.whl >/dev/null 2>&1 && [ -z "${REHEARSAL:-}" ]; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl >> "$OUT/session.log" 2>&1 \
    && log "wheels installed: $(ls .whl | tr '\n' ' ')" || log "wheel install FAILED (TRL side will be skipped)"
fi
$PY -c "import trl; print('trl', trl.__version__)" >> "$OUT/session.log" 2>&1 || log "trl does not import"

log "part 2: the $PRESET preset's SFT reference, in the background"
timeout 300 $PY - > "$OUT/sft.log" 2>&1 <<EOF &
import time, torch
from kltutor.capstone.config import preset
from kltutor.capstone.preflight import resolve_device
from kltutor.capstone.sft import reference_policy
cfg = preset("$PRESET", device="$DEV", progress=False)
t = time.time()
_, _, info = reference_policy(cfg, resolve_device(cfg.device))
print(f"reference: greedy {info.greedy_accuracy:.3f}, sampled {info.sampled_accuracy:.3f}, "
      f"{info.n_parameters:,} parameters, final SFT loss {info.sft_losses[-1] if info.sft_losses else float('nan'):.4f}, "
      f"{time.time() - t:.0f} s (cached: {info.cached})")
EOF
sft_pid=$!

log "part 3: sampler vs transformers forward, every decode mode"
timeout "$QUICK_T" $PY benchmarks/capstone_throughput.py --device "$DEV" --quick > "$OUT/quick.txt" 2>&1
log "quick check exit $? ($(grep -c '^  ok' "$OUT/quick.txt") ok, $(grep -c '^  BAD' "$OUT/quick.txt") bad)"

log "part 4: the capstone CLI on $DEV: 6 steps, and 3 + resume to 6"
{
  CLI="$PY -m kltutor.capstone --device $DEV --no-progress --cache-dir /tmp/cli-cache"
  timeout "$CLI_T" $CLI --preset smoke --steps 6 --checkpoint-every 3 --run-dir /tmp/cli_a && \
  timeout 60 $CLI --preset smoke --steps 3 --checkpoint-every 3 --run-dir /tmp/cli_b && \
  timeout 60 $CLI --steps 6 --checkpoint-every 3 --run-dir /tmp/cli_b --resume  # a resume takes its settings from run.json
  echo "exit $?"
  $PY - <<'EOF'
import json
rows = lambda d: [json.loads(l) for l in open(f"{d}/metrics.jsonl")]
a, b = rows("/tmp/cli_a"), rows("/tmp/cli_b")
skip = {"seconds", "tokens_per_second"}
worst = max(abs(x[k] - y[k]) for x, y in zip(a, b) for k in x if k not in skip)
print(f"uninterrupted vs resumed: {len(a)} and {len(b)} rows, largest difference of any metric {worst:.3g}")
EOF
} > "$OUT/cli.txt" 2>&1
log "CLI: $(tail -2 "$OUT/cli.txt" | tr '\n' ' ')"

log "waiting for the SFT reference"
wait $sft_pid; log "SFT exit $?: $(tail -1 "$OUT/sft.log")"

log "part 5: capstone vs TRL GRPOTrainer ($(left) s left)"
timeout 210 $PY benchmarks/capstone_throughput.py --device "$DEV" --decode-mode auto $TP_ARGS --json "$OUT/throughput.json" > "$OUT/throughput.txt" 2>&1
log "throughput exit $?: $(grep -h 'speed-up' "$OUT/throughput.txt" | tr '\n' ' ')"

log "part 6: log-prob memory ($(left) s left)"
timeout 90 $PY benchmarks/logprob_memory.py $MEM_ARGS > "$OUT/memory.txt" 2>&1
log "memory exit $?: $(tail -3 "$OUT/memory.txt" | tr '\n' ' ')"

deadline=$(( $(left) - 45 ))
log "part 7: the sweep, $WORKERS workers, no run starts after $deadline s"
if [ "$deadline" -gt 30 ]; then
  $PY benchmarks/capstone_gpu_sweep.py --preset "$PRESET" --device "$DEV" --steps "$SWEEP_STEPS" --workers "$WORKERS" \
     --deadline "$deadline" --grace 20 --runs /tmp/gpu_sweep_runs --results "$OUT" >> "$OUT/session.log" 2>&1
  log "sweep exit $?"
else
  log "no time left for the sweep"
fi
cat "$OUT/sft.log" >> "$OUT/session.log" && rm -f "$OUT/sft.log"  # at most 8 files come back
log "done in $(elapsed) s"
