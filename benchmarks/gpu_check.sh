#!/usr/bin/env bash
# The guide's run on a GPU machine, checked in one go (about 6 minutes on one H100/H200 with 16
# cores). Run from the repository root on the GPU machine:
#
#     OUT=/some/folder bash benchmarks/gpu_check.sh
#
# (a) trains BeamRider with the guide's hyperparameters on CUDA, the envs on the multiprocessing
#     backend over the machine's cores, for TRAIN_SECONDS, then stops it with Ctrl-C (SIGINT) as
#     a user would; SPS per epoch come from the run's metrics.jsonl;
# (b) evaluates the last checkpoint on CUDA, collapses it (weight fibers, positions; and the
#     data criterion where the package has it), writes fidelity.json, and resumes the collapsed
#     model on CUDA for two epochs;
# (c) times the fibers of the 3.9M network with the pairwise products on the GPU against the
#     CPU (benchmarks/fibers_device.py);
# (d) runs the test suite's device tests (tests/test_devices.py, CUDA cases included);
# (e) trains puffer_pong (an Ocean game) at PufferLib's reference settings for its SPS.
# Everything lands in $OUT: gpu_check.json (the summary), log.out / log.err (the dashboard),
# and results.tar.gz (metrics, fidelity files, test output, the console).
#
# Python: the machine's python3 with its torch; when it cannot import pufferlib, the wheels in
# .device/wheels are unpacked onto its path (benchmarks/device_wheels.sh downloads them
# beforehand on a machine with the package registry).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_check_out}
TRAIN_SECONDS=${TRAIN_SECONDS:-150}
WORKERS=${WORKERS:-12}          # env worker processes (cores left for the trainer process)
ENVS_PER_WORKER=${ENVS_PER_WORKER:-5}
DEVICE=${DEVICE:-cuda}          # DEVICE=cpu rehearses the script on a machine without a GPU
read -r -a TRAIN_EXTRA <<< "${TRAIN_EXTRA:-}"  # e.g. "--train.batch-size 2048" for a rehearsal
WORK=$(mktemp -d)
mkdir -p "$OUT"
exec > >(tee "$WORK/console.txt") 2>&1
start=$(date +%s)
stamp() { echo "[gpu_check +$(($(date +%s) - start))s] $*"; }

PY=${PY:-python3}
if ! "$PY" -c "import torch" 2>/dev/null && [ -x /opt/torch/.venv/bin/python3 ]; then
    PY=/opt/torch/.venv/bin/python3  # the CUDA image's python with PyTorch
fi
SITE=""
if ! "$PY" -c "import pufferlib, ale_py" 2>/dev/null; then
    # A wheel is a zip of an installed package: unpacked beside the image's packages (its torch
    # and numpy stay in charge), without pip or a registry.
    stamp "unpacking .device/wheels into $WORK/site"
    SITE="$WORK/site"
    for wheel in .device/wheels/*.whl; do "$PY" -m zipfile -e "$wheel" "$SITE"; done
fi
export PYTHONPATH="$PWD${SITE:+:$SITE}${PYTHONPATH:+:$PYTHONPATH}"
"$PY" - <<'EOF' > "$WORK/machine.json"
import json, os, platform, torch, numpy
print(json.dumps({
    "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    "cpus": os.cpu_count(), "python": platform.python_version(),
    "torch": torch.__version__, "cuda": torch.version.cuda, "numpy": numpy.__version__,
}))
EOF
stamp "machine: $(cat "$WORK/machine.json")"

# (a) train: the guide's BeamRider settings, CUDA, envs on all cores, stopped by SIGINT.
NUM_ENVS=$((WORKERS * ENVS_PER_WORKER))
TRAIN=(--env beam_rider --train.device "$DEVICE" --train.data-dir "$WORK/runs" "${TRAIN_EXTRA[@]}")
VEC=(--vec multiprocessing --vec.num-envs "$NUM_ENVS" --vec.num-workers "$WORKERS"
     --vec.env-batch-size $((NUM_ENVS / 2)))  # two halves: one steps while the GPU acts
stamp "(a) training ${TRAIN_SECONDS}s: ${NUM_ENVS} envs on ${WORKERS} workers"
timeout -s INT -k 60 "$TRAIN_SECONDS" "$PY" demo.py --mode train "${TRAIN[@]}" "${VEC[@]}" \
    > "$OUT/log.out" 2> "$OUT/log.err"
train_rc=$?
RUN=$(ls -d "$WORK"/runs/beam_rider-* 2>/dev/null | head -1)
LAST=$(ls "$RUN"/model_*.pt 2>/dev/null | sort | tail -1)
stamp "train exit $train_rc; run $RUN; last checkpoint $LAST"
cp "$RUN/metrics.jsonl" "$WORK/" 2>/dev/null

# (b) evaluate, collapse (fidelity), resume the collapsed model for two epochs.
eval_rc=1 collapse_rc=1 data_rc=skipped resume_rc=1
if [ -n "$LAST" ]; then
    stamp "(b) eval"
    timeout -k 10 90 "$PY" demo.py --mode eval --env beam_rider --train.device "$DEVICE" --eval-model-path "$LAST" \
        --eval-episodes 8 > "$WORK/eval.txt" 2>&1
    eval_rc=$?
    stamp "(b) collapse τ=0.3 (weights, positions)"
    timeout -k 10 90 "$PY" -m pufferfiber collapse "$LAST" --threshold 0.3 --device "$DEVICE" --episodes 3 \
        --out "$WORK/collapsed_weights" > "$WORK/collapse_weights.txt" 2>&1
    collapse_rc=$?
    cp "$WORK/collapsed_weights/fidelity.json" "$WORK/fidelity_weights.json" 2>/dev/null
    if "$PY" -m pufferfiber collapse --help | grep -q -- "--criterion"; then
        stamp "(b) collapse τ=0.3 (data criterion)"
        timeout -k 10 150 "$PY" -m pufferfiber collapse "$LAST" --threshold 0.3 --criterion data --device "$DEVICE" \
            --episodes 3 --out "$WORK/collapsed_data" > "$WORK/collapse_data.txt" 2>&1
        data_rc=$?
        cp "$WORK/collapsed_data/fidelity.json" "$WORK/fidelity_data.json" 2>/dev/null
    fi
    epoch=$((10#$(basename "$LAST" .pt | sed 's/model_//')))
    stamp "(b) resume the collapsed model of epoch $epoch for two epochs"
    timeout -k 10 150 "$PY" demo.py --mode train "${TRAIN[@]}" "${VEC[@]}" --exp-id "$(basename "$RUN")" \
        --collapse 0.3 --collapse-epoch "$epoch" --collapse-until $((epoch + 2)) \
        > "$WORK/log_collapsed.out" 2> "$WORK/log_collapsed.err"
    resume_rc=$?
fi

# (c) fibers of the 3.9M network: products on the GPU vs the CPU.
stamp "(c) fibers timing"
timeout -k 10 120 "$PY" benchmarks/fibers_device.py --device "$DEVICE" --checkpoint "${LAST:-none}" \
    --json "$WORK/fibers_device.json" > "$WORK/fibers_device.txt" 2>&1
fibers_rc=$?
cat "$WORK/fibers_device.txt"

# (e) an Ocean game on the GPU at PufferLib's reference settings (1,024 games, batch 65,536,
#     minibatch 16,384, bptt 16, one update epoch), for its training SPS.
ocean_rc=skipped
if "$PY" demo.py --help | grep -q puffer_pong; then
    stamp "(e) puffer_pong, reference settings"
    timeout -s INT -k 30 "${OCEAN_SECONDS:-90}" "$PY" demo.py --mode train --env puffer_pong \
        --train.device "$DEVICE" --train.data-dir "$WORK/ocean" --vec.num-envs 1024 \
        --train.batch-size 65536 --train.minibatch-size 16384 --train.bptt-horizon 16 \
        --train.update-epochs 1 --train.total-timesteps 1310720 \
        > "$WORK/ocean.out" 2> "$WORK/ocean.err"
    ocean_rc=$?
    cp "$(ls "$WORK"/ocean/*/metrics.jsonl | head -1)" "$WORK/ocean_metrics.jsonl" 2>/dev/null
fi

# (d) the device tests.
stamp "(d) pytest tests/test_devices.py"
timeout -k 10 150 "$PY" -m pytest -q -p no:cacheprovider tests/test_devices.py > "$WORK/pytest.txt" 2>&1
pytest_rc=$?
tail -3 "$WORK/pytest.txt"

stamp "summary"
"$PY" - "$WORK" "$train_rc" "$eval_rc" "$collapse_rc" "$data_rc" "$resume_rc" "$fibers_rc" \
    "$pytest_rc" "$ocean_rc" "$NUM_ENVS" "$WORKERS" "$TRAIN_SECONDS" <<'EOF' > "$OUT/gpu_check.json"
import json, sys
from pathlib import Path
work = Path(sys.argv[1])
names = ["train", "eval", "collapse_weights", "collapse_data", "collapse_resume", "fibers",
         "pytest", "ocean"]
def load(name):
    p = work / name
    return json.loads(p.read_text()) if p.is_file() else None
def lines(name):
    p = work / name
    return [json.loads(l) for l in p.read_text().splitlines()] if p.is_file() else []
metrics = lines("metrics.jsonl")
summary = {
    "machine": load("machine.json"),
    "exit_codes": dict(zip(names, sys.argv[2:10])),
    "settings": {"num_envs": int(sys.argv[10]), "num_workers": int(sys.argv[11]),
                 "train_seconds": int(sys.argv[12])},
    "ocean_sps_per_epoch": [round(m["sps"]) for m in lines("ocean_metrics.jsonl")],
    "sps_per_epoch": [round(m["sps"]) for m in metrics],
    "episode_return": [m.get("episode_return") for m in metrics],
    "epochs": len(metrics),
    "eval": (work / "eval.txt").read_text().strip().splitlines()[-1:]
    if (work / "eval.txt").is_file() else None,
    "fidelity_weights": load("fidelity_weights.json"),
    "fidelity_data": load("fidelity_data.json"),
    "fibers_device": load("fibers_device.json"),
    "pytest": (work / "pytest.txt").read_text().strip().splitlines()[-1:]
    if (work / "pytest.txt").is_file() else None,
}
print(json.dumps(summary, indent=1))
EOF
cat "$OUT/gpu_check.json" | head -40
tar -czf "$OUT/results.tar.gz" -C "$WORK" --exclude site --exclude runs --exclude 'collapsed_*' .
stamp "done"
