#!/usr/bin/env bash
# Every GPU measurement of the capstone in one prepared call (issue 31): a lent GPU machine is short-lived,
# so this script does it all under one time budget and writes every result under $OUT as soon as it exists.
#
#   OUT=gpu_out BUDGET=540 bash benchmarks/gpu_session.sh          # on the GPU machine (python3 with torch + CUDA)
#   REHEARSAL=1 PY=.venv-trainers/bin/python OUT=/tmp/gpu_out bash benchmarks/gpu_session.sh   # CPU rehearsal, tiny sizes
#
# Every part's time limit is a share of the time LEFT (never a fixed sum that can overrun the budget), and a
# part that fails or is cut short is logged while the next one runs. Parts, in order:
#   1. environment, offline settings, the carried wheels (.whl/*.whl: TRL and what it needs that the image
#      lacks) into /tmp/site, and an import check of them against the image's packages (first 30 s);
#   2. the preset's SFT reference, trained once (its own deadline) in the background; the sweep loads it;
#   3. the sampler against a transformers forward in every decode mode; a mode that fell back fails, and
#      two CUDA-graph replays must draw different samples whose frequencies pass a chi-square test;
#   4. the capstone CLI on CUDA: a 6-step run, and the same cut at 3 and resumed (metrics compared);
#   5. capstone vs TRL GRPOTrainer, like for like (plain k3 on both sides), paired per-step ratios, no phase
#      timing (the headline figure);
#   6. chunked vs naive log-probs at vocabulary 151,936;
#   7. the placement sweep, sized from a measured step time so that every seed of the runs it keeps finishes.
# At most 8 files come back from $OUT (benchmarks/gpu_call.sh adds the Colab-like run's two): this script
# writes five, session.log (each part's own output appended as soon as the part ends), throughput.txt,
# throughput.json, sweep.csv and meta.json.
set -u
OUT=${OUT:-gpu_out}
BUDGET=${BUDGET:-540}
PY=${PY:-python3}
RESERVE=${RESERVE:-15}  # seconds kept free at the end (the files' transfer)
mkdir -p "$OUT" /tmp/parts
part_out() { echo "----- $1" >> "$OUT/session.log"; cat "/tmp/parts/$1" >> "$OUT/session.log"; }
start=$(date +%s)
elapsed() { echo $(( $(date +%s) - start )); }
left() { echo $(( BUDGET - RESERVE - $(elapsed) )); }
# lim SHARE CAP: SHARE percent of the time left, at most CAP seconds, at least 5
lim() { local l; l=$(left); local s=$(( l * $1 / 100 )); [ "$s" -gt "$2" ] && s=$2; [ "$s" -lt 5 ] && s=5; echo "$s"; }
log() { echo "[$(elapsed) s] $*" | tee -a "$OUT/session.log"; }
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1 KLTUTOR_CACHE=${KLTUTOR_CACHE:-/tmp/kltutor-cache}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1
export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-/tmp/inductor-cache} TRITON_CACHE_DIR=${TRITON_CACHE_DIR:-/tmp/triton-cache}
export PYTHONPATH="$PWD:/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
if [ -n "${REHEARSAL:-}" ]; then
  DEV=cpu; PRESET=smoke; SWEEP_STEPS=4; WORKERS=2; TP_ARGS="--steps 3 --warmup 1"; MEM_ARGS="--tokens 256 --chunk 64"; PILOT=2
else
  DEV=cuda; PRESET=${PRESET:-h100}; SWEEP_STEPS=${SWEEP_STEPS:-200}; WORKERS=${WORKERS:-12}; TP_ARGS=""; MEM_ARGS=""; PILOT=4
fi

log "part 1: environment, wheels, import check (budget $BUDGET s)"
{ nvidia-smi 2>&1 | head -20; $PY -c "import torch, transformers, sys; print(sys.version); print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available()); print('transformers', transformers.__version__)"; } >> "$OUT/session.log" 2>&1
if ls .whl/*.whl >/dev/null 2>&1 && [ -z "${REHEARSAL:-}" ]; then
  timeout 20 $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl >> "$OUT/session.log" 2>&1 \
    && log "wheels installed: $(ls .whl | tr '\n' ' ')" || log "wheel install FAILED (TRL side will be skipped)"
fi
# the carried wheels against the image: every requirement of trl and datasets met by what is importable
timeout 10 $PY - >> "$OUT/session.log" 2>&1 <<'EOF' && log "import check: ok" || log "import check: CONFLICT (see session.log); the parts that need TRL may fail, the rest runs"
import importlib.metadata as md, sys
from packaging.requirements import Requirement
bad = []
for dist in ("trl", "datasets"):
    try:
        reqs = md.requires(dist) or []
        __import__(dist)
        print(dist, md.version(dist))
    except Exception as e:
        bad.append(f"{dist}: {type(e).__name__}: {e}")
        continue
    for r in map(Requirement, reqs):
        if r.marker and not r.marker.evaluate({"extra": ""}):
            continue
        try:
            v = md.version(r.name)
        except md.PackageNotFoundError:
            bad.append(f"{dist} needs {r}, not installed")
            continue
        if r.specifier and not r.specifier.contains(v, prereleases=True):
            bad.append(f"{dist} needs {r}, the image has {r.name} {v}")
print("\n".join(bad) or "no conflict")
sys.exit(1 if bad else 0)
EOF

log "part 2: the $PRESET preset's SFT reference, in the background ($(lim 60 300) s)"
timeout "$(lim 60 300)" $PY - > "/tmp/parts/sft.log" 2>&1 <<EOF &
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

log "part 3: sampler vs transformers forward, every decode mode ($(lim 25 150) s)"
timeout "$(lim 25 150)" $PY benchmarks/capstone_throughput.py --device "$DEV" --quick > "/tmp/parts/quick.txt" 2>&1
rc=$?; part_out quick.txt
log "quick check exit $rc ($(grep -c '^  ok' "/tmp/parts/quick.txt") ok, $(grep -c '^  BAD' "/tmp/parts/quick.txt") bad)"

log "part 4: the capstone CLI on $DEV: 6 steps, and 3 + resume to 6 ($(lim 20 120) s)"
cli_t=$(lim 20 120)
{
  CLI="$PY -m kltutor.capstone --device $DEV --no-progress --cache-dir /tmp/cli-cache"
  # --overwrite: a rerun of the call on the same machine finds the first call's runs there
  timeout "$cli_t" $CLI --preset smoke --steps 6 --checkpoint-every 3 --run-dir /tmp/cli_a --overwrite && \
  timeout "$cli_t" $CLI --preset smoke --steps 3 --checkpoint-every 3 --run-dir /tmp/cli_b --overwrite && \
  timeout "$cli_t" $CLI --steps 6 --checkpoint-every 3 --run-dir /tmp/cli_b --resume  # a resume takes its settings from run.json
  echo "exit $?"
  [ -s /tmp/cli_a/metrics.jsonl ] && [ -s /tmp/cli_b/metrics.jsonl ] || echo "no metrics to compare (a run failed or was cut short)"
  [ -s /tmp/cli_a/metrics.jsonl ] && [ -s /tmp/cli_b/metrics.jsonl ] && $PY - <<'EOF'
import json
rows = lambda d: [json.loads(l) for l in open(f"{d}/metrics.jsonl")]
a, b = rows("/tmp/cli_a"), rows("/tmp/cli_b")
skip = {"seconds", "tokens_per_second"}
worst = max(abs(x[k] - y[k]) for x, y in zip(a, b) for k in x if k not in skip)
print(f"uninterrupted vs resumed: {len(a)} and {len(b)} rows, largest difference of any metric {worst:.3g}")
EOF
} > "/tmp/parts/cli.txt" 2>&1
part_out cli.txt
log "CLI: $(tail -2 "/tmp/parts/cli.txt" | tr '\n' ' ')"

log "part 5: capstone vs TRL GRPOTrainer, like for like ($(lim 35 210) s)"
timeout "$(lim 35 210)" $PY benchmarks/capstone_throughput.py --device "$DEV" --decode-mode auto --no-phases $TP_ARGS \
  --json "$OUT/throughput.json" > "$OUT/throughput.txt" 2>&1
log "throughput exit $?: $(grep -h 'paired' "$OUT/throughput.txt" | tr '\n' ' ')"

log "part 6: log-prob memory ($(lim 15 90) s)"
timeout "$(lim 15 90)" $PY benchmarks/logprob_memory.py $MEM_ARGS > "/tmp/parts/memory.txt" 2>&1
rc=$?; part_out memory.txt
log "memory exit $rc: $(tail -3 "/tmp/parts/memory.txt" | tr '\n' ' ')"

log "waiting for the SFT reference"
wait $sft_pid; rc=$?; part_out sft.log
log "SFT exit $rc: $(tail -1 "/tmp/parts/sft.log")"

deadline=$(( $(left) - 30 ))
log "part 7: the sweep, sized to the $deadline s left (pilot: 1 and $WORKERS processes)"
if [ "$deadline" -gt 30 ]; then
  $PY benchmarks/capstone_gpu_sweep.py --preset "$PRESET" --device "$DEV" --steps "$SWEEP_STEPS" --workers "$WORKERS" \
     --size-to-budget --pilot-steps "$PILOT" --deadline "$deadline" --grace 20 --runs /tmp/gpu_sweep_runs \
     --results "$OUT" >> "$OUT/session.log" 2>&1
  log "sweep exit $?"
else
  log "no time left for the sweep"
fi
log "done in $(elapsed) s"
