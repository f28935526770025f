#!/usr/bin/env bash
# Puts NVIDIA's PTX assembler, ptxas, in .tools/ptxas/ (ignored by git), for the kernel tests that assemble every CUDA
# kernel offline for sm_80 and sm_90 (tests/IlgpuMedusa.Kernels.Tests/PtxasChecks.cs): no GPU and no driver needed.
# ptxas comes from Debian bookworm's non-free package nvidia-cuda-toolkit (CUDA 11.8; ptxas is a static binary). The
# package is downloaded through a private apt configuration in a temporary folder (the signature of Debian's index is
# checked with the system keyring as usual); the system's apt sources are not changed and nothing is installed.
# Idempotent. ILGPU_MEDUSA_PTXAS=/path/to/ptxas makes the tests use another ptxas instead.
set -euo pipefail
cd "$(dirname "$0")/.."
dest=.tools/ptxas
if [ -x "$dest/ptxas" ] && "$dest/ptxas" --version >/dev/null 2>&1; then
  exit 0
fi
# A ptxas named by ILGPU_MEDUSA_PTXAS, or one on PATH (a CUDA toolkit), is what the tests use when .tools has none.
if [ -n "${ILGPU_MEDUSA_PTXAS:-}" ] && "$ILGPU_MEDUSA_PTXAS" --version >/dev/null 2>&1; then
  exit 0
fi
if [ -z "${ILGPU_MEDUSA_PTXAS:-}" ] && command -v ptxas >/dev/null && ptxas --version >/dev/null 2>&1; then
  exit 0
fi
for tool in apt-get dpkg-deb tar; do
  command -v "$tool" >/dev/null || { echo "error: get-ptxas.sh needs $tool (a Debian or Ubuntu machine)" >&2; exit 1; }
done
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
[ -f "$keyring" ] || { echo "error: get-ptxas.sh needs Debian's archive keyring at $keyring (package debian-archive-keyring)" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/lists/partial" "$work/cache/archives/partial" "$work/deb"
echo "deb [signed-by=$keyring] http://deb.debian.org/debian bookworm non-free" > "$work/sources.list"
apt_opts=(-o "Dir::Etc::SourceList=$work/sources.list" -o "Dir::Etc::SourceParts=$work/none"
  -o "Dir::State::Lists=$work/lists" -o "Dir::Cache=$work/cache" -o "Debug::NoLocking=1" -o "APT::Sandbox::User=$(id -un)")
echo "== getting ptxas (nvidia-cuda-toolkit from Debian bookworm non-free, ~85 MB download)"
apt-get "${apt_opts[@]}" update -qq
(cd "$work/deb" && apt-get "${apt_opts[@]}" download -qq nvidia-cuda-toolkit)
deb=$(ls "$work"/deb/nvidia-cuda-toolkit_*.deb)
dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$work" ./usr/bin/ptxas
mkdir -p "$dest"
mv "$work/usr/bin/ptxas" "$dest/ptxas"
"$dest/ptxas" --version | tail -1
