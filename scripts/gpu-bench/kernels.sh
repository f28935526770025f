#!/usr/bin/env bash
# The kit's kernel-level check, for a GPU session that wants kernel timings before (or instead of) the whole run:
# on the GPU machine, from the repository root, with .gpu-kit carried (scripts/gpu-bench/prepare.sh builds it):
#
#   bash scripts/gpu-bench/kernels.sh [--device cuda|cpu-emulator|opencl] [--quick] [--local-dotnet]
#
# 1. unpacks the carried .NET runtime (as run.sh does); 2. runs the conformance console (GpuCheck) with --kernels-only:
# the kernel conformance suite on the device, then the GEMV and small-T / prefill matmul timings per kernel path
# (float32-core skinny and tiled kernels, tensor cores with split and rounded inputs) and attention timings (decode,
# prefill, trees: one token per group, blocks of 8 tokens, one warp for decoding); 3. when a ptxas is there (a CUDA
# toolkit), GpuCheck --ptxas: every kernel's registers, shared memory, local memory and resident warps for sm_90.
# Output: $OUT/kernels.log (default ./gpu-bench-results). Exit code: GpuCheck's (1 when a conformance check
# failed). --local-dotnet runs with the dotnet on PATH instead of the carried runtime.
# Dry run on a CPU: bash scripts/gpu-bench/kernels.sh --device cpu-emulator --quick --local-dotnet
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1
KIT=$PWD/.gpu-kit
DEVICE=cuda QUICK=() LOCAL_DOTNET=0
while (($#)); do
  case $1 in
    --device) DEVICE=${2:?--device needs a value}; shift ;;
    --quick) QUICK=(--quick) ;;
    --local-dotnet) LOCAL_DOTNET=1 ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "kernels.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
  esac
  shift
done
RESULTS=${OUT:-$PWD/gpu-bench-results}
WORK=${GPU_BENCH_WORK:-/tmp/gpu-bench-kernels}
mkdir -p "$RESULTS" "$WORK" || exit 1
exec > >(tee "$RESULTS/kernels.log") 2>&1
export DOTNET_CLI_TELEMETRY_OPTOUT=1 DOTNET_NOLOGO=1 DOTNET_EnableWriteXorExecute=0

if ((LOCAL_DOTNET)); then
  DOTNET=$(command -v dotnet) || { echo "kernels.sh: no dotnet on PATH" >&2; exit 1; }
else
  [[ -f $KIT/dotnet-runtime.tar.xz ]] || { echo "kernels.sh: $KIT/dotnet-runtime.tar.xz is missing (run prepare.sh, carry .gpu-kit)" >&2; exit 1; }
  rm -rf "$WORK/dotnet" && mkdir -p "$WORK/dotnet" && tar -xJf "$KIT/dotnet-runtime.tar.xz" -C "$WORK/dotnet" || exit 1
  export DOTNET_ROOT=$WORK/dotnet
  DOTNET=$WORK/dotnet/dotnet
fi
[[ -f $KIT/gpucheck/IlgpuMedusa.Kernels.GpuCheck.dll && -d $KIT/app ]] || { echo "kernels.sh: no GpuCheck in $KIT (run prepare.sh)" >&2; exit 1; }
rm -rf "$WORK/gpucheck" && cp -R "$KIT/app" "$WORK/gpucheck" && cp -R "$KIT/gpucheck/." "$WORK/gpucheck/" || exit 1

# ILGPU opens the driver as libcuda.so; point one at libcuda.so.1 when only that is there (as run.sh does).
if [[ $DEVICE == cuda ]] && ! ldconfig -p 2>/dev/null | grep -q 'libcuda\.so '; then
  lib=$(ldconfig -p 2>/dev/null | awk '/libcuda\.so\.1 / {print $NF; exit}')
  [[ -z $lib ]] && for f in /usr/local/nvidia/lib64/libcuda.so.1 /usr/lib/x86_64-linux-gnu/libcuda.so.1; do [[ -e $f ]] && lib=$f && break; done
  if [[ -n $lib ]]; then
    mkdir -p "$WORK/lib" && ln -sf "$(readlink -f "$lib")" "$WORK/lib/libcuda.so"
    export LD_LIBRARY_PATH=$WORK/lib:$(dirname "$lib")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
  fi
fi
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv,noheader

echo "== GpuCheck $DEVICE --kernels-only ${QUICK[*]}"
timeout 400 "$DOTNET" "$WORK/gpucheck/IlgpuMedusa.Kernels.GpuCheck.dll" "$DEVICE" --kernels-only "${QUICK[@]}"
status=$?

echo "== registers, shared memory and resident warps per kernel (GpuCheck --ptxas)"
ptxas=$(command -v ptxas || ls /usr/local/cuda/bin/ptxas 2>/dev/null | head -n1)
if [[ -n $ptxas ]]; then
  timeout 300 "$DOTNET" "$WORK/gpucheck/IlgpuMedusa.Kernels.GpuCheck.dll" --ptxas "$ptxas" || echo "ptxas report: exit $?"
else
  echo "no ptxas here: the report is the same without a GPU (bash scripts/get-ptxas.sh, then GpuCheck --ptxas; docs/benchmarks.md)"
fi
echo "== done (GpuCheck exit $status)"
exit "$status"
