#!/usr/bin/env bash
# Downloads, on a machine with the package registry, the wheels that benchmarks/gpu_check.sh
# installs on the GPU machine, which has its own python3 (3.12), torch and numpy but no
# PufferLib or ALE and cannot reach a registry. They land in .device/wheels (ignored by git;
# carry it to the GPU machine). Pure-Python packages published only as source are built here.
set -euo pipefail
cd "$(dirname "$0")/.."
PYVER=${PYVER:-3.12}
DEST=.device/wheels
mkdir -p "$DEST"
binary=(pufferlib==2.0.2 ale-py==0.12.1 gymnasium==0.29.1 pettingzoo==1.24.1
        farama-notifications==0.0.4 gym-notices==0.1.0)
pip download --quiet --no-deps --only-binary=:all: --python-version "$PYVER" \
    --implementation cp --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 \
    -d "$DEST" "${binary[@]}"
pip wheel --quiet --no-deps -w "$DEST" gym==0.23.0 shimmy==1.3.0
ls -la "$DEST"
