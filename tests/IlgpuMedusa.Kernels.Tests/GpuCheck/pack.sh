#!/bin/bash
# Builds what the GPU machine needs (it has no .NET): a framework-dependent publish of the GPU check and the local .NET
# runtime packed with xz, into artifacts/gpucheck (ignored by git; about 33 MB). Then, on the GPU machine, from the
# repository root: bash tests/IlgpuMedusa.Kernels.Tests/GpuCheck/run.sh
# The GPU benchmark kit (scripts/gpu-bench/prepare.sh) carries this console too, in .gpu-kit/gpucheck, and runs only its
# conformance suite (--conformance-only) in its demo stage; this separate pack is for the full check with the kernel
# timings and the 1.1B-shape decode.
set -euo pipefail
root=$(cd "$(dirname "$0")/../../.." && pwd)
out=$root/artifacts/gpucheck
rm -rf "$out/app" && mkdir -p "$out"
dotnet publish "$root/tests/IlgpuMedusa.Kernels.Tests/GpuCheck" -c Release -o "$out/app" --nologo
dotnet_root=$(dirname "$(readlink -f "$(command -v dotnet)")")
runtime=$(ls -d "$dotnet_root"/shared/Microsoft.NETCore.App/10.* | sort -V | tail -1)
[ -f "$out/dotnet-runtime.tar.xz" ] || (cd "$dotnet_root" && tar -cf - dotnet host "${runtime#"$dotnet_root"/}" | xz -T0 -6 > "$out/dotnet-runtime.tar.xz")
du -sh "$out"
