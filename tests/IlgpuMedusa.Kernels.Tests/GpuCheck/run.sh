#!/bin/bash
# Runs the GPU check on a machine without .NET, from the files pack.sh put in artifacts/gpucheck. Prints what it finds
# about the driver and libraries first, so that one failed run still says why. Arguments go to the console:
# [cuda|opencl|cpu-emulator] [--quick] [--conformance-only] (default: cuda, everything).
set -u
root=$(cd "$(dirname "$0")/../../.." && pwd)
kit=$root/artifacts/gpucheck
echo "== machine"; nproc; free -g | head -2
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1 | head -3
echo "== libcuda"; ldconfig -p | grep -E "libcuda\.so" | head -3
# ILGPU opens libcuda.so by that exact name; some driver installs only register libcuda.so.1.
if ! ldconfig -p | grep -q "libcuda\.so "; then
  one=$(ldconfig -p | awk '/libcuda\.so\.1 / {print $NF; exit}')
  [ -z "$one" ] && one=$(find / -name 'libcuda.so.1' -not -path '/proc/*' 2>/dev/null | head -1)
  echo "no libcuda.so registered; linking $one"
  mkdir -p /tmp/cudalib && ln -sf "$one" /tmp/cudalib/libcuda.so
  export LD_LIBRARY_PATH=/tmp/cudalib:${LD_LIBRARY_PATH:-}
fi
mkdir -p /tmp/dotnet-gpucheck && tar -xJf "$kit/dotnet-runtime.tar.xz" -C /tmp/dotnet-gpucheck
export DOTNET_ROOT=/tmp/dotnet-gpucheck DOTNET_CLI_TELEMETRY_OPTOUT=1 DOTNET_NOLOGO=1
ldconfig -p | grep -q libicuuc || { echo "no libicu: invariant globalization"; export DOTNET_SYSTEM_GLOBALIZATION_INVARIANT=1; }
echo "== gpucheck $*"
timeout "${GPUCHECK_TIMEOUT:-380}" /tmp/dotnet-gpucheck/dotnet "$kit/app/IlgpuMedusa.Kernels.GpuCheck.dll" "${@:-cuda}"
echo "exit $?"
