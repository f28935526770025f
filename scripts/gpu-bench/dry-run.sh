#!/usr/bin/env bash
# The GPU benchmark kit end to end without a GPU, for CI and for trying changes to the kit: builds the kit without the
# runtime archive (prepare.sh --skip-runtime), then runs run.sh --dry-run (stories15M converted to f16, profiled on
# the host backend; the transformers side is skipped). About a minute; exit code 0 when our profile produced every
# field the report needs.
#   scripts/gpu-bench/dry-run.sh [--with-runtime] [run.sh options, e.g. --device opencl]
# --with-runtime also packs the .NET runtime and runs the app from it, exactly as on the GPU machine (~30 s more).
set -euo pipefail
cd "$(dirname "$0")/../.."
prepare=(--skip-runtime)
run=()
for arg in "$@"; do
  if [[ $arg == --with-runtime ]]; then prepare=(); run+=(--kit-runtime); else run+=("$arg"); fi
done
bash scripts/gpu-bench/prepare.sh "${prepare[@]}"
exec bash scripts/gpu-bench/run.sh --dry-run "${run[@]}"
