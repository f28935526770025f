#!/usr/bin/env bash
# Builds the GPU benchmark kit in .gpu-kit/ (git-ignored; it travels to the GPU machine as a carried path):
#   .gpu-kit/app/                   framework-dependent publish of the ilgpu-medusa CLI (linux-x64)
#   .gpu-kit/dotnet-runtime.tar.xz  the .NET runtime the app needs: dotnet host, host/fxr, shared/Microsoft.NETCore.App
#   .gpu-kit/tokenizer.model        the demo model's tokenizer, copied next to the random-weight models made there
#                                   (tokenizer.bin instead, with a warning, while the `convert` command is missing)
#   .gpu-kit/COMMIT                 git rev-parse HEAD (and "dirty" when the working tree has changes)
#
#   scripts/gpu-bench/prepare.sh [--skip-runtime] [--max-mib 55]
#
# --skip-runtime leaves the runtime archive out (the dry run uses the local dotnet). Fails when .gpu-kit is larger
# than --max-mib MiB; also prints what the whole working tree that travels to the GPU machine will weigh (limit 64 MiB).
set -euo pipefail
cd "$(dirname "$0")/../.."
KIT=.gpu-kit
SKIP_RUNTIME=0
MAX_MIB=55
while (($#)); do
  case $1 in
    --skip-runtime) SKIP_RUNTIME=1 ;;
    --max-mib) MAX_MIB=$2; shift ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "prepare.sh: unknown option '$1'" >&2; exit 2 ;;
  esac
  shift
done
export DOTNET_CLI_TELEMETRY_OPTOUT=1 DOTNET_NOLOGO=1
log() { printf '[prepare %(%H:%M:%S)T] %s\n' -1 "$*"; }

mkdir -p "$KIT"
rm -rf "$KIT/app" "$KIT/tokenizer.model" "$KIT/tokenizer.bin"

log "publishing src/IlgpuMedusa.Cli (Release, linux-x64, framework-dependent) to $KIT/app"
dotnet publish src/IlgpuMedusa.Cli -c Release -r linux-x64 --self-contained false -o "$KIT/app" -nologo -v quiet
# Satellite resource folders (System.CommandLine's translations; the app runs culture-invariant) are not needed.
for d in "$KIT"/app/*/; do
  if [[ -d $d ]] && ! find "$d" -type f ! -name '*.resources.dll' | grep -q .; then rm -rf "$d"; fi
done
[[ -f $KIT/app/ilgpu-medusa.dll ]] || { echo "prepare.sh: publish produced no $KIT/app/ilgpu-medusa.dll" >&2; exit 1; }

if ((SKIP_RUNTIME)); then
  log "--skip-runtime: not packing the .NET runtime"
else
  # The runtime version the app targets (runtimeconfig.json says e.g. 10.0.0; the newest installed 10.0.x serves it).
  want=$(grep -o '"version": *"[^"]*"' "$KIT/app/ilgpu-medusa.runtimeconfig.json" | head -n1 | grep -o '[0-9][0-9.]*')
  major_minor=${want%.*}
  line=$(dotnet --list-runtimes | awk -v mm="$major_minor" '$1 == "Microsoft.NETCore.App" && index($2, mm ".") == 1' | sort -V -k2 | tail -n1)
  [[ -n $line ]] || { echo "prepare.sh: no Microsoft.NETCore.App $major_minor.x in 'dotnet --list-runtimes'" >&2; exit 1; }
  version=$(awk '{print $2}' <<<"$line")
  shared=${line#*[} && shared=${shared%]}              # .../dotnet/shared/Microsoft.NETCore.App
  dotnet_root=$(cd "$shared/../.." && pwd)
  fxr=$(find "$dotnet_root/host/fxr" -mindepth 1 -maxdepth 1 -type d -printf '%f\n' | sort -V | tail -n1)
  stamp="$version fxr $fxr from $dotnet_root"
  if [[ -f $KIT/dotnet-runtime.tar.xz && "$(cat "$KIT/dotnet-runtime.version" 2>/dev/null)" == "$stamp" ]]; then
    log "runtime archive already holds Microsoft.NETCore.App $version (hostfxr $fxr); kept"
  else
    log "packing Microsoft.NETCore.App $version + hostfxr $fxr + dotnet host from $dotnet_root (tar | xz -6, ~30 s)"
    extras=()
    for f in LICENSE.txt ThirdPartyNotices.txt; do [[ -f $dotnet_root/$f ]] && extras+=("$f"); done
    tar -C "$dotnet_root" -cf - dotnet "host/fxr/$fxr" "shared/Microsoft.NETCore.App/$version" "${extras[@]}" \
      | xz -6 -T0 >"$KIT/dotnet-runtime.tar.xz.tmp"
    mv "$KIT/dotnet-runtime.tar.xz.tmp" "$KIT/dotnet-runtime.tar.xz"
    echo "$stamp" >"$KIT/dotnet-runtime.version"
  fi
fi

# The tokenizer: `convert` writes tokenizer.model (SentencePiece) beside the f16 Hugging Face weights of the demo model.
app=(dotnet "$KIT/app/ilgpu-medusa.dll")
if [[ ! -f models/stories15M/stories15M.bin ]]; then
  log "fetching the demo model into models/stories15M"
  "${app[@]}" fetch-demo --dir models/stories15M
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
log "converting models/stories15M to f16 (for its tokenizer.model)"
if "${app[@]}" convert --model models/stories15M --out "$tmp/hf" --dtype f16 && [[ -f $tmp/hf/tokenizer.model ]]; then
  cp "$tmp/hf/tokenizer.model" "$KIT/tokenizer.model"
  log "copied tokenizer.model ($(stat -c %s "$KIT/tokenizer.model") bytes)"
else
  cp models/stories15M/tokenizer.bin "$KIT/tokenizer.bin"
  log "WARNING: 'convert' failed or wrote no tokenizer.model; carrying models/stories15M/tokenizer.bin instead"
  log "WARNING: (the runtime reads tokenizer.bin too; rerun prepare.sh once 'convert' exists)"
fi

{ git rev-parse HEAD; [[ -z "$(git status --porcelain --untracked-files=no 2>/dev/null)" ]] || echo dirty; } >"$KIT/COMMIT"
log "COMMIT: $(tr '\n' ' ' <"$KIT/COMMIT")"

kit_bytes=$(du -sb "$KIT" | awk '{print $1}')
# (du exits non-zero for tracked files deleted from the working tree; the total is still right.)
tree_bytes=$( (git ls-files -z --cached --others --exclude-standard | du -cb --files0-from=- 2>/dev/null || true) | tail -n1 | awk '{print $1+0}')
mib() { awk -v b="$1" 'BEGIN {printf "%.1f", b / 1048576}'; }
du -sh "$KIT"/* | sed 's/^/    /'
log "kit size: $(mib "$kit_bytes") MiB (limit $MAX_MIB MiB); working tree that travels with it: $(mib "$((kit_bytes + tree_bytes))") MiB (tool limit 64 MiB)"
if ((kit_bytes > MAX_MIB * 1048576)); then
  echo "prepare.sh: $KIT is $(mib "$kit_bytes") MiB, above the $MAX_MIB MiB limit" >&2
  exit 1
fi
if ((kit_bytes + tree_bytes > 64 * 1048576)); then
  log "WARNING: the working tree plus the kit exceed 64 MiB: the device tool will refuse it (untracked files?)"
fi
log "kit ready: carry .gpu-kit and run: bash scripts/gpu-bench/run.sh"
