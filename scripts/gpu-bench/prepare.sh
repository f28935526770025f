#!/usr/bin/env bash
# Builds the GPU benchmark kit in .gpu-kit/ (git-ignored; it travels to the GPU machine as a carried path):
#   .gpu-kit/app/                   framework-dependent publish of the ilgpu-medusa CLI (linux-x64; no *.xml docs, no
#                                   satellite resource folders; the .pdb files stay, for line numbers in stack traces)
#   .gpu-kit/gpucheck/              the kernel conformance console (tests/IlgpuMedusa.Kernels.Tests/GpuCheck), only the
#                                   files that differ from app/'s: run.sh lays it over a copy of app/
#   .gpu-kit/demo.tar.xz            the demo model stories15M as `convert --dtype f16` writes it (config.json,
#                                   model.safetensors, tokenizer.model) plus the shipped Medusa heads
#                                   (heads/stories15M/medusa_lm_head.safetensors), in stories15M-f16/; and a copy of
#                                   prompts/stories-20.txt (run.sh uses the working tree's when it is there)
#   .gpu-kit/dotnet-runtime.tar.xz  the .NET runtime the apps need: dotnet host, host/fxr, shared/Microsoft.NETCore.App
#   .gpu-kit/tokenizer.model        the demo model's tokenizer, copied next to the random-weight models made there
#   .gpu-kit/COMMIT                 git rev-parse HEAD (and "dirty" when the working tree has changes)
#
#   scripts/gpu-bench/prepare.sh [--skip-runtime] [--max-mib 62]
#
# --skip-runtime leaves the runtime archive out (the dry run uses the local dotnet). The device tool carries at most
# 64 MiB, the working tree that travels with .gpu-kit included: prepare.sh fails when .gpu-kit plus that working tree
# weigh more than --max-mib MiB (62: a 2 MiB margin). The two archives are rebuilt only when their inputs change.
set -euo pipefail
cd "$(dirname "$0")/../.."
KIT=.gpu-kit
SKIP_RUNTIME=0
MAX_MIB=62
while (($#)); do
  case $1 in
    --skip-runtime) SKIP_RUNTIME=1 ;;
    --max-mib) [[ ${2:-} =~ ^[0-9]+$ ]] || { echo "prepare.sh: --max-mib needs a whole number of MiB" >&2; exit 2; }
               MAX_MIB=$2; shift ;;
    -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
    *) echo "prepare.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
  esac
  shift
done
export DOTNET_CLI_TELEMETRY_OPTOUT=1 DOTNET_NOLOGO=1
log() { printf '[prepare %(%H:%M:%S)T] %s\n' -1 "$*"; }
die() { echo "prepare.sh: $*" >&2; exit 1; }
command -v dotnet >/dev/null || die "no dotnet on PATH (the kit is built with the .NET SDK)"
command -v xz >/dev/null || die "no xz program (apt-get install xz-utils)"

mkdir -p "$KIT"
rm -rf "$KIT/app" "$KIT/gpucheck" "$KIT/tokenizer.model" "$KIT/tokenizer.bin"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# slim DIR: drops what a run never reads: satellite resource folders (System.CommandLine's and xunit's translations;
# the apps run culture-invariant) and the XML documentation files.
slim() {
  local d
  for d in "$1"/*/; do
    if [[ -d $d ]] && ! find "$d" -type f ! -name '*.resources.dll' | grep -q .; then rm -rf "$d"; fi
  done
  rm -f "$1"/*.xml
}

log "publishing src/IlgpuMedusa.Cli (Release, linux-x64, framework-dependent) to $KIT/app"
dotnet publish src/IlgpuMedusa.Cli -c Release -r linux-x64 --self-contained false -o "$KIT/app" -nologo -v quiet \
  || die "publishing src/IlgpuMedusa.Cli failed (see the build output above)"
slim "$KIT/app"
[[ -f $KIT/app/ilgpu-medusa.dll ]] || die "publish produced no $KIT/app/ilgpu-medusa.dll"

# The conformance console shares all but a few files with the CLI (the same IlgpuMedusa, ILGPU, ... builds): only the
# files that differ are kept; run.sh copies app/ and lays gpucheck/ over it.
gpucheck_project=tests/IlgpuMedusa.Kernels.Tests/GpuCheck
log "publishing $gpucheck_project (the same way) and keeping the files that app/ lacks"
dotnet publish "$gpucheck_project" -c Release -r linux-x64 --self-contained false -o "$tmp/gpucheck" -nologo -v quiet \
  || die "publishing $gpucheck_project failed (see the build output above)"
slim "$tmp/gpucheck"
[[ -f $tmp/gpucheck/IlgpuMedusa.Kernels.GpuCheck.dll ]] || die "publish produced no IlgpuMedusa.Kernels.GpuCheck.dll"
mkdir -p "$KIT/gpucheck"
shared=0
for f in "$tmp"/gpucheck/*; do
  [[ -f $f ]] || die "unexpected folder in the GpuCheck publish: $f"
  if cmp -s "$f" "$KIT/app/${f##*/}"; then shared=$((shared + 1)); else cp "$f" "$KIT/gpucheck/"; fi
done
log "gpucheck: $(find "$KIT/gpucheck" -type f | wc -l) own files ($(du -sh "$KIT/gpucheck" | cut -f1)), $shared shared with app/"

# xz options: the runtime is mostly x86-64 code (native libraries, ReadyToRun assemblies), hence the BCJ filter and
# the strongest preset (25.0 instead of 26.5 MB; ~1 min, once per runtime version). The demo weights are float16:
# lp=1,pb=1 tells LZMA2 its data comes in 2-byte units (30.4 -> 18.6 MB with the tokenizer and heads; ~13 s).
RUNTIME_XZ=(--x86 --lzma2=preset=9e)
# shellcheck disable=SC2054 # the commas belong to xz's filter option
DEMO_XZ=(--lzma2=preset=6,lp=1,pb=1)

if ((SKIP_RUNTIME)); then
  log "--skip-runtime: not packing the .NET runtime"
else
  # The runtime version the app targets (runtimeconfig.json says e.g. 10.0.0; the newest installed 10.0.x serves it).
  want=$(grep -o '"version": *"[^"]*"' "$KIT/app/ilgpu-medusa.runtimeconfig.json" | head -n1 | grep -o '[0-9][0-9.]*')
  [[ -n $want ]] || die "no framework version in $KIT/app/ilgpu-medusa.runtimeconfig.json"
  major_minor=${want%.*}
  line=$(dotnet --list-runtimes | awk -v mm="$major_minor" '$1 == "Microsoft.NETCore.App" && index($2, mm ".") == 1' | sort -V -k2 | tail -n1)
  [[ -n $line ]] || die "no Microsoft.NETCore.App $major_minor.x in 'dotnet --list-runtimes'"
  version=$(awk '{print $2}' <<<"$line")
  shared_dir=${line#*[} && shared_dir=${shared_dir%]}   # .../dotnet/shared/Microsoft.NETCore.App
  dotnet_root=$(cd "$shared_dir/../.." && pwd)
  fxr=$(find "$dotnet_root/host/fxr" -mindepth 1 -maxdepth 1 -type d -printf '%f\n' | sort -V | tail -n1)
  stamp="$version fxr $fxr from $dotnet_root, xz ${RUNTIME_XZ[*]}"
  if [[ -f $KIT/dotnet-runtime.tar.xz && "$(cat "$KIT/dotnet-runtime.version" 2>/dev/null)" == "$stamp" ]]; then
    log "runtime archive already holds Microsoft.NETCore.App $version (hostfxr $fxr); kept"
  else
    log "packing Microsoft.NETCore.App $version + hostfxr $fxr + dotnet host from $dotnet_root (xz ${RUNTIME_XZ[*]}, ~1 min)"
    extras=()
    for f in LICENSE.txt ThirdPartyNotices.txt; do [[ -f $dotnet_root/$f ]] && extras+=("$f"); done
    tar -C "$dotnet_root" -cf - dotnet "host/fxr/$fxr" "shared/Microsoft.NETCore.App/$version" "${extras[@]}" \
      | xz -T0 "${RUNTIME_XZ[@]}" >"$KIT/dotnet-runtime.tar.xz.tmp" || die "packing the runtime failed"
    mv "$KIT/dotnet-runtime.tar.xz.tmp" "$KIT/dotnet-runtime.tar.xz"
    echo "$stamp" >"$KIT/dotnet-runtime.version"
  fi
fi

# The demo model: stories15M converted to f16 Hugging Face files by the app itself, plus the shipped heads, which
# `--heads auto` finds as medusa_lm_head.safetensors in the model directory.
app=(dotnet "$KIT/app/ilgpu-medusa.dll")
if [[ ! -f models/stories15M/stories15M.bin ]]; then
  log "fetching the demo model into models/stories15M"
  "${app[@]}" fetch-demo --dir models/stories15M || die "fetch-demo failed: the demo model is needed for the kit"
fi
heads=heads/stories15M/medusa_lm_head.safetensors
[[ -f $heads ]] || heads=models/stories15M/medusa_lm_head.safetensors
[[ -f $heads ]] || die "no Medusa heads for the demo model (heads/stories15M/ or models/stories15M/medusa_lm_head.safetensors)"
demo=$tmp/demo/stories15M-f16
log "converting models/stories15M to f16 into $demo; heads from $heads"
"${app[@]}" convert --model models/stories15M --out "$demo" --dtype f16 || die "'convert --dtype f16' of models/stories15M failed"
for f in config.json model.safetensors tokenizer.model; do
  [[ -s $demo/$f ]] || die "'convert' wrote no $f"
done
cp "$heads" "$demo/medusa_lm_head.safetensors"
cp "$demo/tokenizer.model" "$KIT/tokenizer.model"
[[ -f prompts/stories-20.txt ]] || die "no prompts/stories-20.txt (the demo bench's prompts)"
cp prompts/stories-20.txt "$tmp/demo/stories-20.txt"
stamp="$( (cd "$tmp/demo" && sha256sum -- stories-20.txt stories15M-f16/* | sha256sum | cut -c1-64)), xz ${DEMO_XZ[*]}"
if [[ -f $KIT/demo.tar.xz && "$(cat "$KIT/demo.version" 2>/dev/null)" == "$stamp" ]]; then
  log "demo archive already holds these files; kept"
else
  log "packing the demo model ($(du -sh "$demo" | cut -f1)) into $KIT/demo.tar.xz (xz ${DEMO_XZ[*]}, ~15 s)"
  tar -C "$tmp/demo" -cf - stories15M-f16 stories-20.txt | xz -T0 "${DEMO_XZ[@]}" >"$KIT/demo.tar.xz.tmp" || die "packing the demo model failed"
  mv "$KIT/demo.tar.xz.tmp" "$KIT/demo.tar.xz"
  echo "$stamp" >"$KIT/demo.version"
fi

{ git rev-parse HEAD; [[ -z "$(git status --porcelain --untracked-files=no 2>/dev/null)" ]] || echo dirty; } >"$KIT/COMMIT"
log "COMMIT: $(tr '\n' ' ' <"$KIT/COMMIT")"

kit_bytes=$(du -sb "$KIT" | awk '{print $1}')
# (du exits non-zero for tracked files deleted from the working tree; the total is still right.)
tree_bytes=$( (git ls-files -z --cached --others --exclude-standard | du -cb --files0-from=- 2>/dev/null || true) | tail -n1 | awk '{print $1+0}')
total=$((kit_bytes + tree_bytes))
mib() { awk -v b="$1" 'BEGIN {printf "%.1f", b / 1048576}'; }
du -sb "$KIT"/* | awk '{printf "    %10d  %s\n", $1, $2}'
log "kit: $kit_bytes bytes ($(mib "$kit_bytes") MiB); with the working tree that travels with it ($(mib "$tree_bytes") MiB):" \
  "$total bytes ($(mib "$total") MiB); limit $MAX_MIB MiB (the device tool's is 64 MiB)"
if ((total > MAX_MIB * 1048576)); then
  die "$KIT plus the working tree weigh $(mib "$total") MiB, above the $MAX_MIB MiB limit (untracked files in the tree?)"
fi
log "kit ready: carry .gpu-kit and run: bash scripts/gpu-bench/run.sh"
