#!/usr/bin/env bash
# The capstone chapter as a Colab user runs it (issue 32), on a GPU machine, under one time budget:
# kltutor installed from the repository as the chapter's install cell would (a regular, non-editable
# install into a fresh environment that sees the image's torch and transformers, as Colab's do), the
# notebook copied outside the repository, and executed with papermill three times:
#   1. preset "colab" (a 16 GB GPU's sizes), precision chosen by the device ("auto");
#   2. preset "h100";
#   3. preset "colab" with bf16 off and float16 forced (what a T4-class GPU, without bf16, runs).
# For each: wall time, peak GPU memory (nvidia-smi, every 0.5 s), the decode mode and precision the
# notebook reports, and which cell failed if one did (every cell asserts its claims). One JSON line per
# run goes to $OUT/colab.jsonl as soon as the run ends; the log to $OUT/colab.log.
#
#   OUT=gpu_out BUDGET=240 bash benchmarks/colab_session.sh
#   REHEARSAL=1 PY=.venv/bin/python OUT=/tmp/colab_out BUDGET=600 bash benchmarks/colab_session.sh   # CPU, smoke sizes
# COLAB_ENV, COLAB_WORK and COLAB_WHEEL (default /tmp/colab-env, /tmp/colab-run, /tmp/kltutor-wheel) move its
# scratch folders, e.g. for two rehearsals on one machine.
set -u
OUT=${OUT:-gpu_out}
BUDGET=${BUDGET:-240}
PY=${PY:-python3}
REPO=$PWD
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
start=$(date +%s)
elapsed() { echo $(( $(date +%s) - start )); }
left() { echo $(( BUDGET - 10 - $(elapsed) )); }
log() { echo "[$(elapsed) s] $*" | tee -a "$OUT/colab.log"; }
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
export KLTUTOR_CACHE=${KLTUTOR_CACHE:-/tmp/kltutor-colab-cache} TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-/tmp/inductor-cache}
unset PYTHONPATH  # the installed package, not the repository's folder

ENV=${COLAB_ENV:-/tmp/colab-env}
WHEEL=${COLAB_WHEEL:-/tmp/kltutor-wheel}
log "install: a fresh environment over the image's packages, kltutor from the repository (not editable)"
{
  rm -rf "$ENV" && $PY -m venv --system-site-packages "$ENV" &&  # fresh: a kltutor left there would be kept by pip
  # the image's packages (those of $PY, a venv's too, as in the CPU rehearsal) visible in the new environment
  $PY -c "import site; print('\n'.join(site.getsitepackages()))" > "$("$ENV/bin/python" -c 'import site; print(site.getsitepackages()[0])')/image.pth" &&
  if ! "$ENV/bin/python" -c "import papermill, ipykernel" 2>/dev/null && ls "$REPO"/.whl-colab/*.whl >/dev/null 2>&1; then
    "$ENV/bin/python" -m pip install -q --no-index --no-deps --find-links "$REPO/.whl-colab" "$REPO"/.whl-colab/*.whl
  fi &&
  rm -rf "$WHEEL" && $PY -m pip wheel -q --no-index --no-deps --no-build-isolation -w "$WHEEL" "$REPO" &&
  "$ENV/bin/python" -m pip install -q --no-index --no-deps "$WHEEL"/kltutor-*.whl &&
  "$ENV/bin/python" -m ipykernel install --sys-prefix --name python3 >/dev/null &&
  (cd / && "$ENV/bin/python" -c "import kltutor, papermill, torch; print('kltutor from', kltutor.__file__); print('papermill', papermill.__version__, 'torch', torch.__version__, 'cuda', torch.cuda.is_available())")  # from /: not the repository folder
} >> "$OUT/colab.log" 2>&1 || { log "install FAILED: see colab.log"; exit 1; }

NB=$(ls "$REPO"/notebooks/*_capstone.ipynb | head -1)
WORK=${COLAB_WORK:-/tmp/colab-run}
rm -rf "$WORK" && mkdir -p "$WORK" && cp "$NB" "$WORK/capstone.ipynb" && cd "$WORK" || exit 1
if [ -n "${REHEARSAL:-}" ]; then
  RUNS="colab:smoke:auto h100:smoke:auto fp16:smoke:float16"; GPU_STEPS=2
else
  RUNS="colab:colab:auto h100:h100:auto fp16:colab:float16"; GPU_STEPS=${GPU_STEPS:-20}
fi

n=0; total=$(echo $RUNS | wc -w)
for spec in $RUNS; do
  IFS=: read -r name preset precision <<< "$spec"
  n=$(( n + 1 ))
  t=$(( $(left) / (total - n + 1) ))
  if [ "$t" -lt 20 ]; then log "$name: no time left"; continue; fi
  log "$name: preset $preset, precision $precision, $t s"
  mem_pid=
  if command -v nvidia-smi >/dev/null; then  # its own process id, so that only it is stopped below
    nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 500 > "$WORK/$name.mem" 2>/dev/null &
    mem_pid=$!
  fi
  t0=$(date +%s)
  timeout "$t" "$ENV/bin/python" -m papermill capstone.ipynb "$name.ipynb" -k python3 --log-level WARNING \
    -p gpu_preset "$preset" -p gpu_precision "$precision" -p gpu_steps "$GPU_STEPS" -p gpu_seeds "[0]" \
    -p gpu_placements '["none", "k1-in-reward", "k3-in-loss"]' -p gpu_betas "[0.1]" >> "$OUT/colab.log" 2>&1
  rc=$?
  wall=$(( $(date +%s) - t0 ))
  if [ -n "$mem_pid" ]; then kill "$mem_pid" 2>/dev/null; wait "$mem_pid" 2>/dev/null; fi
  "$ENV/bin/python" - "$name" "$preset" "$precision" "$rc" "$wall" "$t" >> "$OUT/colab.jsonl" 2>> "$OUT/colab.log" <<'EOF'
import json, re, sys
from pathlib import Path
name, preset, precision, rc, wall, limit = sys.argv[1:]
row = {"run": name, "preset": preset, "precision_requested": precision, "exit": int(rc), "wall_s": round(float(wall), 1),
       "time_limit_s": int(limit), "timed_out": rc in ("124", "137")}
mem = Path(f"{name}.mem")
vals = [int(v) for v in mem.read_text().split()] if mem.exists() else []
row["peak_gpu_mib"] = max(vals) if vals else None
nb = Path(f"{name}.ipynb")
if nb.exists():
    cells = [c for c in json.loads(nb.read_text())["cells"] if c["cell_type"] == "code"]
    ran = [c for c in cells if c.get("execution_count")]
    failed = [c for c in cells if c.get("metadata", {}).get("papermill", {}).get("exception")]
    row["cells"], row["cells_run"] = len(cells), len(ran)
    row["failed_cell"] = None
    for c in failed:
        err = [o for o in c.get("outputs", []) if o.get("output_type") == "error"]
        row["failed_cell"] = {"id": c.get("id"), "source": "".join(c["source"])[:300],
                              "error": (err[0]["ename"] + ": " + err[0]["evalue"])[:500] if err else None}
    text = "\n".join("".join(o.get("text", "")) for c in cells for o in c.get("outputs", []) if o.get("output_type") == "stream")
    for key, pat in (("decode_mode", r"decode mode used: (\S+)"), ("precision", r"precision used: (\S+)"),
                     ("gpu", r"GPU: ([^\n]+)"), ("gpu_peak_allocated_gib", r"peak allocated: ([0-9.]+) GiB")):
        m = re.search(pat, text)
        row[key] = m.group(1) if m else None
    row["all_assertions_held"] = not failed and int(rc) == 0
print(json.dumps(row))
EOF
  log "$name: exit $rc in $wall s: $(tail -1 "$OUT/colab.jsonl" | cut -c1-300)"
done
log "done in $(elapsed) s"
