#!/usr/bin/env bash
# The GPU benchmark kit end to end without a GPU, for CI and for trying changes to the kit: builds the kit without the
# runtime archive (prepare.sh --skip-runtime), then runs run.sh --dry-run on the host backend: the demo stage (the
# conformance console on ILGPU's CPU emulator, greedy tokens compared, `bench` AR vs Medusa on 4 prompts) and the
# `tiny` shape (stories15M converted to f16, profiled; the transformers side is skipped). About a minute; exit code 0
# when the demo stage and our profile produced every figure the report needs and no demo check failed.
#   scripts/gpu-bench/dry-run.sh [--with-runtime] [run.sh options, e.g. --device opencl]
# --with-runtime also packs the .NET runtime (~1 min the first time) and runs the apps from it, exactly as on the GPU
# machine.
set -euo pipefail
cd "$(dirname "$0")/../.."
prepare=(--skip-runtime)
run=()
for arg in "$@"; do
  if [[ $arg == --with-runtime ]]; then prepare=(); run+=(--kit-runtime); else run+=("$arg"); fi
done
bash scripts/gpu-bench/prepare.sh "${prepare[@]}"
exec bash scripts/gpu-bench/run.sh --dry-run "${run[@]}"
