#!/usr/bin/env bash
# The GPU benchmark kit's run. On the GPU machine, from the repository root, with .gpu-kit carried
# (scripts/gpu-bench/prepare.sh builds it; docs/benchmarks.md says how to invoke it):
#
#   bash scripts/gpu-bench/run.sh             # demo stage, then the ~1B and 7B shapes: ours, then transformers; 7 min
#   bash scripts/gpu-bench/run.sh --dry-run   # the same script here: host backend, transformers skipped
#                                             # (scripts/gpu-bench/dry-run.sh builds the kit and calls it)
#
# The demo stage (shape "demo", first by default: two issues wait on it) uses the kit's stories15M in f16 with its
# Medusa heads: the kernel conformance console on the device; greedy tokens from "Once upon a time" on the device and
# on the host backend (--heads none), compared token by token, with both decode rates; `bench` on the device (AR vs
# Medusa); every tree on the device (`bench --sweep-trees`); the HTTP server on the device under 8 concurrent streaming
# requests (serve_check.py); the prefix cache's time to first token, cold vs warm (`bench --prefix-cache`); `bench`
# on the host last, only with time to spare. The other shapes are random-weight
# models (make_model.py).
#
# Options: --device D (cuda; dry run: host, or opencl with ILGPU_MEDUSA_ALLOW_CPU_OPENCL=1), --shapes demo,1b,7b
#   (dry run: demo,tiny), --skip-demo, --budget-s S (450; dry run 360), --prompt-tokens N (512; 64),
#   --decode-tokens N (128; 16), --greedy-tokens N (32; 8), --tree-sizes 1,4,16,64, --no-compile (skip the
#   static-cache + torch.compile runs), --demo-tokens N (greedy demo tokens, 64), --bench-tokens N (128; 16),
#   --bench-prompts N (prompts of prompts/stories-20.txt the benches use; 0 = all; dry run 4), --kit-runtime (dry run:
#   unpack and use the carried .NET runtime, as on the GPU machine), --op-steps N (steps `profile --op-times` stamps, 8;
#   0 skips the op-time steps).
# Environment: OUT (results folder, default ./gpu-bench-results): gpu-bench.json, run.log, raw.tar.gz land there;
#   GPU_BENCH_WORK (scratch, default /tmp/gpu-bench or /tmp/gpu-bench-dry); GPU_BENCH_MODELS (default /tmp/models);
#   GPU_BENCH_APP (the command that runs our CLI instead of `dotnet .gpu-kit/app/ilgpu-medusa.dll`; for testing).
#
# Every step runs under `timeout` inside one overall budget, most important results first; a failed step is reported
# (its stderr tail goes into gpu-bench.json) and the run goes on with whatever does not depend on it. The exit code is
# 1 when a step failed or timed out, or a demo check failed (conformance, greedy tokens differ), else 0.
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1
ROOT=$PWD
KIT=$ROOT/.gpu-kit
SCRIPTS=$ROOT/scripts/gpu-bench

DRY_RUN=0 KIT_RUNTIME="" COMPILE=1 SKIP_DEMO=0
DEVICE="" SHAPES="" BUDGET_S="" PROMPT_TOKENS="" DECODE_TOKENS="" GREEDY_TOKENS="" TREE_SIZES="1,4,16,64"
DEMO_TOKENS=64 BENCH_TOKENS="" BENCH_PROMPTS="" OP_STEPS=8
DEMO_PROMPT="Once upon a time"
number_arg() { [[ ${2:-} =~ ^[0-9]+$ ]] || { echo "run.sh: $1 needs a whole number, got '${2:-}'" >&2; exit 2; }; }
while (($#)); do
  case $1 in
    --dry-run) DRY_RUN=1 ;;
    --kit-runtime) KIT_RUNTIME=1 ;;
    --no-compile) COMPILE=0 ;;
    --skip-demo) SKIP_DEMO=1 ;;
    --demo-tokens) number_arg "$1" "${2:-}"; DEMO_TOKENS=$2; shift ;;
    --bench-tokens) number_arg "$1" "${2:-}"; BENCH_TOKENS=$2; shift ;;
    --bench-prompts) number_arg "$1" "${2:-}"; BENCH_PROMPTS=$2; shift ;;
    --op-steps) number_arg "$1" "${2:-}"; OP_STEPS=$2; shift ;;
    --device) DEVICE=$2; shift ;;
    --shapes) SHAPES=$2; shift ;;
    --budget-s) BUDGET_S=$2; shift ;;
    --prompt-tokens) PROMPT_TOKENS=$2; shift ;;
    --decode-tokens) DECODE_TOKENS=$2; shift ;;
    --greedy-tokens) GREEDY_TOKENS=$2; shift ;;
    --tree-sizes) TREE_SIZES=$2; shift ;;
    -h|--help) sed -n '2,28p' "$0"; exit 0 ;;
    *) echo "run.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
  esac
  shift
done
if ((DRY_RUN)); then
  MODE=dry-run
  : "${DEVICE:=host}" "${SHAPES:=demo,tiny}" "${BUDGET_S:=360}" "${PROMPT_TOKENS:=64}" "${DECODE_TOKENS:=16}" "${GREEDY_TOKENS:=8}" "${KIT_RUNTIME:=0}"
  : "${BENCH_TOKENS:=16}" "${BENCH_PROMPTS:=4}"
  WORK=${GPU_BENCH_WORK:-/tmp/gpu-bench-dry}
  # A dry run on OpenCL means a CPU OpenCL (PoCL) here, which the apps use only when allowed.
  [[ $DEVICE == opencl ]] && export ILGPU_MEDUSA_ALLOW_CPU_OPENCL=1
else
  MODE=gpu
  # .NET's write-xor-execute double mapping of JIT code is an extra risk under sandboxed kernels (gVisor) and buys
  # nothing for a benchmark.
  export DOTNET_EnableWriteXorExecute=0
  : "${DEVICE:=cuda}" "${SHAPES:=demo,1b,7b}" "${BUDGET_S:=450}" "${PROMPT_TOKENS:=512}" "${DECODE_TOKENS:=128}" "${GREEDY_TOKENS:=32}" "${KIT_RUNTIME:=1}"
  : "${BENCH_TOKENS:=128}" "${BENCH_PROMPTS:=0}"
  WORK=${GPU_BENCH_WORK:-/tmp/gpu-bench}
fi
IFS=, read -ra SHAPE_LIST <<<"$SHAPES"
if ((SKIP_DEMO)); then
  kept=()
  for shape in "${SHAPE_LIST[@]}"; do [[ $shape == demo ]] || kept+=("$shape"); done
  SHAPE_LIST=("${kept[@]}")
  SHAPES=$(IFS=,; echo "${SHAPE_LIST[*]}")
fi
((${#SHAPE_LIST[@]})) || { echo "run.sh: no shapes to run (check --shapes and --skip-demo)" >&2; exit 2; }
# A budget that cannot start a requested random-weight shape wastes the call: say so before anything runs. Each shape
# is started only with its minimum left after the reserve (below); setup before the first shape takes ~15 s.
if ((!DRY_RUN)); then
  declare -A START_MIN_S=([7b]=150 [1b]=75)
  for shape in "${SHAPE_LIST[@]}"; do
    [[ $shape == demo ]] && continue
    need=$(( ${START_MIN_S[$shape]:-60} + 25 + 15 ))
    if ((BUDGET_S < need)); then
      echo "run.sh: --budget-s $BUDGET_S cannot start shape $shape (it needs ${START_MIN_S[$shape]:-60} s left after the 25 s reserve and ~15 s of setup: use --budget-s $need or more, or leave the shape out)" >&2
      exit 2
    fi
  done
fi
RAW=$WORK/raw
RESULTS=${OUT:-$ROOT/gpu-bench-results}
rm -rf "$RAW" && mkdir -p "$RAW" "$RESULTS" || exit 1

# Everything printed also goes to $RESULTS/run.log, which comes back from the GPU machine even if the call is cut off.
exec > >(tee "$RESULTS/run.log") 2>&1
TEE_PID=$!

export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export DOTNET_CLI_TELEMETRY_OPTOUT=1 DOTNET_NOLOGO=1 DOTNET_SKIP_FIRST_TIME_EXPERIENCE=1
export TORCHINDUCTOR_CACHE_DIR=$WORK/inductor-cache

START=$SECONDS
DEADLINE=$((START + BUDGET_S))
RESERVE_S=25   # kept back for the report at the end
MIN_STEP_S=12  # a step that would get less than this is skipped instead
FAILED=()

note() { printf '[+%3ds %(%H:%M:%S)T] %s\n' "$((SECONDS - START))" -1 "$*"; }
prefix_lines() { local line; while IFS= read -r line || [[ -n $line ]]; do printf '    %(%H:%M:%S)T | %s\n' -1 "$line"; done; }

# record NAME STATUS RC SECONDS LIMIT: one line of steps.tsv (report.py reads it).
record() {
  printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "$5" >>"$RAW/steps.tsv"
  case $2 in failed|timeout) FAILED+=("$1") ;; esac
}

# relabel NAME STATUS: changes a recorded step's status (a failure with a working fallback is not a failure).
relabel() {
  local name=$1 status=$2 kept=() f
  [[ -f $RAW/steps.tsv ]] && sed -i "s/^$name\t[a-z]*\t/$name\t$status\t/" "$RAW/steps.tsv"
  for f in "${FAILED[@]}"; do [[ $f == "$name" ]] || kept+=("$f"); done
  FAILED=("${kept[@]}")
}

skip_step() { note "SKIP  $1: $2"; printf '%s\n' "$2" >"$RAW/$1.err"; record "$1" skipped - 0 0; }

# step_limit WANT: the seconds a step may take now: WANT, or what is left of the budget (minus the reserve).
step_limit() {
  local left=$((DEADLINE - SECONDS - RESERVE_S))
  echo $(($1 < left ? $1 : left))
}

# run_step NAME WANT_S CMD...: runs CMD under timeout; stdout -> $RAW/NAME.out (its tail is shown afterwards),
# stderr -> $RAW/NAME.err and the console, line by line with the time. Returns 0 when the command succeeded.
run_step() {
  local name=$1 limit t0 rc status
  limit=$(step_limit "$2")
  shift 2
  if ((limit < MIN_STEP_S)); then
    skip_step "$name" "not started: only $((DEADLINE - SECONDS))s of the ${BUDGET_S}s budget left"
    return 3
  fi
  note "START $name (limit ${limit}s): $*"
  t0=$SECONDS
  timeout --kill-after=10 "$limit" "$@" 2>&1 >"$RAW/$name.out" </dev/null | tee "$RAW/$name.err" | prefix_lines
  rc=${PIPESTATUS[0]}
  case $rc in 0) status=ok ;; 124|137) status=timeout ;; *) status=failed ;; esac
  record "$name" "$status" "$rc" "$((SECONDS - t0))" "$limit"
  if [[ -s $RAW/$name.out ]]; then
    tail -n 25 "$RAW/$name.out" | cut -c1-2000 | sed 's/^/    > /'
  fi
  note "END   $name: $status (exit $rc, $((SECONDS - t0))s)"
  [[ $status == ok ]]
}

# ---------------------------------------------------------------- environment
env_value() { printf '%s=%s\n' "$1" "$2" >>"$RAW/env.txt"; printf '    %-24s %s\n' "$1" "$2"; }

find_libcuda() {
  # Prints the libcuda.so* paths found: the loader cache first, then the usual driver folders (stubs left out).
  {
    ldconfig -p 2>/dev/null | awk '/libcuda\.so/ {print $NF}'
    local d f
    for d in /usr/lib/x86_64-linux-gnu /usr/local/nvidia/lib64 /usr/local/nvidia/lib /usr/lib64 /usr/lib \
             /lib/x86_64-linux-gnu /usr/local/cuda/lib64 /usr/local/cuda/compat /run/nvidia/driver/usr/lib64; do
      for f in "$d"/libcuda.so*; do [[ -e $f ]] && echo "$f"; done
    done
  } | grep -v '/stubs/' | awk '!seen[$0]++'
}

setup_libcuda() {
  # ILGPU opens the driver as "cuda", which .NET resolves to libcuda.so: the unversioned name that only the driver's
  # development files provide. When only libcuda.so.1 is there, point a libcuda.so in $WORK/lib at it.
  local found chosen dir
  found=$(find_libcuda)
  env_value libcuda_found "$(echo "$found" | tr '\n' ' ')"
  chosen=$(echo "$found" | grep -m1 '/libcuda\.so\.1$' || true)
  [[ -n $chosen ]] || chosen=$(echo "$found" | grep -m1 . || true)
  if [[ -z $chosen ]]; then
    env_value libcuda "not found"
    return
  fi
  dir=$(dirname "$chosen")
  if [[ -e $dir/libcuda.so ]]; then
    export LD_LIBRARY_PATH=$dir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
    env_value libcuda "$dir/libcuda.so -> $(readlink -f "$dir/libcuda.so")"
  else
    mkdir -p "$WORK/lib" && ln -sf "$(readlink -f "$chosen")" "$WORK/lib/libcuda.so"
    export LD_LIBRARY_PATH=$WORK/lib:$dir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
    env_value libcuda "$chosen (no libcuda.so beside it: linked $WORK/lib/libcuda.so to $(readlink -f "$chosen"))"
  fi
  env_value LD_LIBRARY_PATH "$LD_LIBRARY_PATH"
}

environment_report() {
  note "== environment ($MODE mode, device $DEVICE, shapes $SHAPES, budget ${BUDGET_S}s)"
  env_value mode "$MODE"
  env_value commit "$(head -c 200 "$KIT/COMMIT" 2>/dev/null | tr '\n' ' ' || echo '?')"
  env_value kernel "$(uname -sr)"
  env_value cpus "$(nproc)"
  env_value memory "$(free -g 2>/dev/null | awk '/^Mem:/ {print $2 " GiB, " $7 " GiB available"}')"
  env_value glibc "$(ldd --version 2>&1 | head -n1)"
  env_value tmp_free "$(df -Ph /tmp | awk 'NR==2 {print $4}')"
  local smi f
  smi=$(command -v nvidia-smi)
  for f in /usr/local/nvidia/bin/nvidia-smi /usr/bin/nvidia-smi; do [[ -z $smi && -x $f ]] && smi=$f; done
  if [[ -n $smi ]]; then
    timeout 30 "$smi" --query-gpu=name,driver_version,memory.total --format=csv,noheader >"$RAW/nvidia-smi.csv" 2>&1
    env_value gpu "$(head -n1 "$RAW/nvidia-smi.csv")"
    timeout 30 "$smi" >"$RAW/nvidia-smi.txt" 2>&1
    env_value cuda_driver_api "$(grep -o 'CUDA Version: *[0-9.]*' "$RAW/nvidia-smi.txt" | grep -o '[0-9.]*$')"
  else
    env_value gpu "none (no nvidia-smi)"
  fi
  env_value nvcc "$( (command -v nvcc && nvcc --version | tail -n1) 2>/dev/null | tr '\n' ' ')"
  setup_libcuda
  if ldconfig -p 2>/dev/null | grep -q 'libicuuc\.so' || compgen -G '/usr/lib/x86_64-linux-gnu/libicuuc.so*' >/dev/null; then
    env_value libicu "found"
  else
    export DOTNET_SYSTEM_GLOBALIZATION_INVARIANT=1
    env_value libicu "not found: DOTNET_SYSTEM_GLOBALIZATION_INVARIANT=1"
  fi
  env_value python "$(command -v python3) $(python3 --version 2>&1)"
  env_value python_packages "$(timeout 30 python3 -c '
import importlib.metadata as m
out = []
for name in ("torch", "transformers", "safetensors", "accelerate"):
    try: out.append(f"{name} {m.version(name)}")
    except Exception: out.append(f"{name} missing")
print(", ".join(out))' 2>&1)"
  if ((!DRY_RUN)); then
    env_value torch_cuda "$(timeout 60 python3 -c '
import torch
print(torch.version.cuda, torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")' 2>&1 | tail -n1)"
  fi
}

# ---------------------------------------------------------------- our runtime
# UNTAR_XZ ARCHIVE DIR (as `bash -c "$UNTAR_XZ" _ ARCHIVE DIR`): empties DIR and unpacks ARCHIVE into it. tar needs the
# xz program for .tar.xz, which slim images lack; Python's tarfile reads it with its own lzma then.
# shellcheck disable=SC2016 # $1 and $2 are the inner shell's arguments
UNTAR_XZ='rm -rf "$2" && mkdir -p "$2" &&
  if command -v xz >/dev/null; then tar -xJf "$1" -C "$2"; else
    echo "no xz program: unpacking with python3 tarfile" >&2
    python3 -c "import sys, tarfile; tarfile.open(sys.argv[1], \"r:xz\").extractall(sys.argv[2])" "$1" "$2"; fi'

APP=()
DOTNET=""   # the dotnet that runs the apps (also the conformance console)
setup_app() {
  if [[ -n ${GPU_BENCH_APP:-} ]]; then
    read -ra APP <<<"$GPU_BENCH_APP"
    DOTNET=$(command -v dotnet || true)
    env_value app "GPU_BENCH_APP: ${APP[*]}"
    return 0
  fi
  if ((KIT_RUNTIME)); then
    local dir=${GPU_BENCH_DOTNET_DIR:-/tmp/dotnet}
    if [[ ! -f $KIT/dotnet-runtime.tar.xz ]]; then
      note "FAIL  unpack-runtime: $KIT/dotnet-runtime.tar.xz is missing (run scripts/gpu-bench/prepare.sh, carry .gpu-kit)"
      echo "$KIT/dotnet-runtime.tar.xz is missing" >"$RAW/unpack-runtime.err"
      record unpack-runtime failed 1 0 0
      return 1
    fi
    # shellcheck disable=SC2016 # $2 is the inner shell's argument
    run_step unpack-runtime 90 bash -c "$UNTAR_XZ"' && "$2/dotnet" --list-runtimes' _ "$KIT/dotnet-runtime.tar.xz" "$dir" \
      || return 1
    export DOTNET_ROOT=$dir
    DOTNET=$dir/dotnet
  else
    DOTNET=$(command -v dotnet) || { skip_step devices "no dotnet on PATH"; return 1; }
  fi
  if [[ ! -f $KIT/app/ilgpu-medusa.dll ]]; then
    skip_step devices "$KIT/app/ilgpu-medusa.dll is missing: run scripts/gpu-bench/prepare.sh"
    return 1
  fi
  APP=("$DOTNET" "$KIT/app/ilgpu-medusa.dll")
  env_value app "${APP[*]}"
}

ours_profile() {  # ours_profile SHAPE MODEL_DIR PROMPT_IDS WANT_S
  local extra=()
  ((DRY_RUN)) && extra=(--copy-mb 256)  # a 1 GiB copy takes ~10 s on a small CPU
  run_step "ours-$1" "$4" "${APP[@]}" profile --model "$2" --device "$DEVICE" --prompt-ids "$3" \
    --decode-tokens "$DECODE_TOKENS" --greedy-tokens "$GREEDY_TOKENS" --tree-sizes "$TREE_SIZES" --json "${extra[@]}"
}

# ours_unfused SHAPE MODEL_DIR PROMPT_IDS WANT_S: our profile again with the fused kernels off (ILGPU_MEDUSA_FUSED=0:
# RMSNorm, SwiGLU, RoPE and the KV write as separate ops), decode and the 1- and largest-node tree steps, for the
# report's side-by-side "fused vs separate" line.
ours_unfused() {
  local largest
  largest=$(tr ',' '\n' <<<"$TREE_SIZES" | sort -n | tail -n1)
  run_step "ours-$1-unfused" "$4" env ILGPU_MEDUSA_FUSED=0 "${APP[@]}" profile --model "$2" --device "$DEVICE" --prompt-ids "$3" \
    --decode-tokens "$DECODE_TOKENS" --greedy-tokens "$GREEDY_TOKENS" --tree-sizes "1,$largest" --repeats 5 --copy-mb 0 --json
}

# ours_f32cores SHAPE MODEL_DIR PROMPT_IDS WANT_S: our profile again with the tensor-core matmul off
# (ILGPU_MEDUSA_TENSOR_CORES=off: the float32-core skinny and tiled kernels for T >= 2), prefill and every tree size,
# for the report's side-by-side "tensor cores vs float32 cores" line.
ours_f32cores() {
  run_step "ours-$1-f32cores" "$4" env ILGPU_MEDUSA_TENSOR_CORES=off "${APP[@]}" profile --model "$2" --device "$DEVICE" \
    --prompt-ids "$3" --decode-tokens 16 --greedy-tokens "$GREEDY_TOKENS" --tree-sizes "$TREE_SIZES" --repeats 3 --copy-mb 0 --json
}

# ours_decode_variant NAME MODEL_DIR PROMPT_IDS WANT_S VAR=VALUE: decode only (64 tokens, the 1-node tree step) with one
# kernel choice switched by its environment variable (ILGPU_MEDUSA_WIDE_GEMV=0: the portable GEMV for 16-bit weights;
# ILGPU_MEDUSA_GEMV_ROWS=2: the wide GEMV with two rows per warp everywhere, as timed on 2026-11-28;
# ILGPU_MEDUSA_DECODE_ATTENTION=per-token / blocks: decoding attention with one group per head and split, as timed on
# 2026-11-28, / in the block kernel, instead of one warp per head and split), for the report's
# "decode variants" lines.
ours_decode_variant() {
  run_step "$1" "$4" env "$5" "${APP[@]}" profile --model "$2" --device "$DEVICE" --prompt-ids "$3" \
    --decode-tokens 64 --greedy-tokens 8 --tree-sizes 1 --repeats 5 --copy-mb 0 --json
}

# ours_tree_variant NAME MODEL_DIR PROMPT_IDS WANT_S VAR=VALUE: decode and every tree size with one kernel choice
# switched by its environment variable (ILGPU_MEDUSA_TREE_ATTENTION=blocks: T >= 2 attention in the block kernel, as
# timed on 2026-11-28, instead of the tile kernel;
# ILGPU_MEDUSA_TENSOR_PREFETCH=1: the staged tensor-core matmul with one weight chunk requested ahead instead of four;
# ILGPU_MEDUSA_TENSOR_SPLITS=fixed: K split for four groups per multiprocessor instead of one wave), with the greedy
# tokens, for the report's "tree variants" lines (each next to the main run's figures).
ours_tree_variant() {
  run_step "$1" "$4" env "$5" "${APP[@]}" profile --model "$2" --device "$DEVICE" --prompt-ids "$3" \
    --decode-tokens 16 --greedy-tokens "$GREEDY_TOKENS" --tree-sizes "$TREE_SIZES" --repeats 5 --copy-mb 0 --json
}

# ours_kv16 SHAPE MODEL_DIR PROMPT_IDS WANT_S: decode and every tree size with the KV cache in binary16 (--kv-dtype f16:
# half the bytes of the cache; keys and values rounded once, when written; attention still in float32), with the greedy
# tokens (equal to the float32 cache's, or not), for the report's "tree variants" lines.
ours_kv16() {
  run_step "ours-$1-kv16" "$4" "${APP[@]}" profile --model "$2" --device "$DEVICE" --prompt-ids "$3" \
    --decode-tokens 16 --greedy-tokens "$GREEDY_TOKENS" --tree-sizes "$TREE_SIZES" --repeats 5 --copy-mb 0 --kv-dtype f16 --json
}

# ours_op_times NAME MODEL_DIR PROMPT_IDS WANT_S: where a step's device time goes, op by op (`profile --op-times`: device
# timestamps around every op for OP_STEPS decode steps and as many forwards of a 4-node tree, a Medusa step's size on
# GPUs, and of the largest tree size). A separate run,
# because the markers slow the launches down; needs an ILGPU device (on the host it says so and reports nothing).
ours_op_times() {
  local largest
  largest=$(tr ',' '\n' <<<"$TREE_SIZES" | sort -n | tail -n1)
  run_step "$1" "$4" "${APP[@]}" profile --model "$2" --device "$DEVICE" --prompt-ids "$3" --decode-tokens 4 \
    --greedy-tokens 4 --tree-sizes "4,$largest" --repeats 1 --copy-mb 0 --op-times "$OP_STEPS" --json
}

# ---------------------------------------------------------------- the demo stage
DEMO_MODEL=$WORK/demo/stories15M-f16
BENCH_PROMPTS_FILE=""
DEMO_STEPS=(demo-conformance demo-greedy-device demo-greedy-host demo-bench-device demo-bench-device-copy-uploads demo-sweep-device demo-serve-device demo-prefix-cache-device demo-ops)

# bench_on NAME DEVICE WANT_S [ENV [ARGS...]]: `bench` of AR vs Medusa (the heads in the model directory: --heads auto) on DEVICE.
bench_on() {
  local name=$1 device=$2 want=$3 environment=${4:-}
  shift $(($# < 4 ? $# : 4))
  run_step "$name" "$want" env ${environment} "${APP[@]}" bench --model "$DEMO_MODEL" --device "$device" --heads auto --prompts "$BENCH_PROMPTS_FILE" \
    --max-tokens "$BENCH_TOKENS" --json "$@"
}

demo_stage() {
  local name kind gpucheck_dir quick=() prompts
  note "== demo: stories15M f16 with its Medusa heads, $DEVICE vs host"
  if ! ((HAVE_APP)); then
    for name in "${DEMO_STEPS[@]}"; do skip_step "$name" "no runnable app (see the unpack-runtime / devices steps)"; done
    return
  fi
  if [[ ! -f $KIT/demo.tar.xz ]]; then
    note "FAIL  unpack-demo: $KIT/demo.tar.xz is missing (run scripts/gpu-bench/prepare.sh, carry .gpu-kit)"
    echo "$KIT/demo.tar.xz is missing" >"$RAW/unpack-demo.err"
    record unpack-demo failed 1 0 0
  elif run_step unpack-demo 60 bash -c "$UNTAR_XZ" _ "$KIT/demo.tar.xz" "$WORK/demo" &&
       [[ ! -f $DEMO_MODEL/model.safetensors || ! -f $DEMO_MODEL/medusa_lm_head.safetensors ]]; then
    note "FAIL  unpack-demo: $KIT/demo.tar.xz holds no stories15M-f16/model.safetensors + medusa_lm_head.safetensors"
    relabel unpack-demo failed
    FAILED+=(unpack-demo)
  fi

  # 1. The kernel conformance suite on the device (the console prepare.sh put in .gpu-kit/gpucheck: its own files laid
  #    over a copy of the app, whose other assemblies it shares). No device there: the CPU emulator.
  case $DEVICE in host|cpu-emulator) kind=cpu-emulator ;; *) kind=$DEVICE ;; esac
  ((DRY_RUN)) && quick=(--quick)
  gpucheck_dir=$WORK/gpucheck
  if [[ -z $DOTNET ]]; then
    skip_step demo-conformance "no dotnet to run the conformance console with"
  elif [[ ! -f $KIT/gpucheck/IlgpuMedusa.Kernels.GpuCheck.dll || ! -d $KIT/app ]]; then
    skip_step demo-conformance "$KIT/gpucheck/IlgpuMedusa.Kernels.GpuCheck.dll is missing: run scripts/gpu-bench/prepare.sh"
  elif ! { rm -rf "$gpucheck_dir" && cp -R "$KIT/app" "$gpucheck_dir" && cp -R "$KIT/gpucheck/." "$gpucheck_dir/"; }; then
    note "FAIL  demo-conformance: could not assemble $gpucheck_dir"
    echo "could not copy $KIT/app + $KIT/gpucheck into $gpucheck_dir" >"$RAW/demo-conformance.err"
    record demo-conformance failed 1 0 0
  else
    env_value gpucheck_device "$kind${quick[*]:+ ${quick[*]}}"
    # On the CPU emulator (dry run) the checks take ~40 s on a quiet 2-core machine and over 2 minutes on a busy one.
    run_step demo-conformance $((DRY_RUN ? 300 : 150)) "$DOTNET" "$gpucheck_dir/IlgpuMedusa.Kernels.GpuCheck.dll" "$kind" --conformance-only "${quick[@]}"
  fi

  if [[ ! -f $DEMO_MODEL/model.safetensors ]]; then
    for name in demo-greedy-device demo-greedy-host demo-bench-device demo-bench-device-copy-uploads demo-sweep-device demo-serve-device demo-prefix-cache-device demo-ops; do skip_step "$name" "no demo model (unpack-demo)"; done
    return
  fi
  # 2. Greedy tokens from the same prompt on the device and on the host, without heads: the same f16 weights on both
  #    sides, so the tokens should be identical (report.py compares them and shows both lists when they are not), and
  #    each token's log-probability (report.py gives the largest difference over the tokens both agree on).
  env_value demo_prompt "$DEMO_PROMPT"
  for name in device host; do
    local on=$DEVICE
    [[ $name == host ]] && on=host
    run_step "demo-greedy-$name" "$([[ $name == host ]] && echo 60 || echo 90)" "${APP[@]}" generate --model "$DEMO_MODEL" \
      --device "$on" --heads none --prompt "$DEMO_PROMPT" --max-tokens "$DEMO_TOKENS" --temperature 0 --json --logprobs 1
  done

  # 3. The bench on the device: AR vs Medusa (tree: the app's default for the device), greedy, on the story prompts.
  prompts=$ROOT/prompts/stories-20.txt
  if [[ ! -f $prompts ]]; then
    prompts=$WORK/demo/stories-20.txt
    note "prompts/stories-20.txt is not in this working tree: using the kit's copy"
  fi
  if [[ ! -f $prompts ]]; then
    for name in demo-bench-device demo-bench-device-copy-uploads demo-sweep-device demo-serve-device demo-prefix-cache-device demo-ops; do
      skip_step "$name" "no prompts/stories-20.txt (neither in the working tree nor in the kit)"
    done
    return
  fi
  BENCH_PROMPTS_FILE=$prompts
  if ((BENCH_PROMPTS > 0)); then
    BENCH_PROMPTS_FILE=$WORK/bench-prompts.txt
    grep -v '^[[:space:]]*\(#\|$\)' "$prompts" | head -n "$BENCH_PROMPTS" >"$BENCH_PROMPTS_FILE"
  fi
  env_value bench_prompts "$BENCH_PROMPTS_FILE ($(grep -cv '^[[:space:]]*\(#\|$\)' "$BENCH_PROMPTS_FILE") prompts x $BENCH_TOKENS tokens)"
  bench_on demo-bench-device "$DEVICE" 150
  # The same bench as before the waits were cut: every upload a copy (each waits for the stream) and a fixed tree's
  # guesses read right after the heads (a second drain per Medusa step). What the two together buy on this device.
  if [[ $DEVICE == host ]]; then
    skip_step demo-bench-device-copy-uploads "the host backend never waits for a device"
  else
    bench_on demo-bench-device-copy-uploads "$DEVICE" 120 "ILGPU_MEDUSA_SMALL_UPLOADS=0 ILGPU_MEDUSA_DEVICE_GUESSES=0"
  fi

  # 4. Every tree preset and shipped tree on the device (`bench --sweep-trees`): step cost and accepted length per tree,
  #    and the fastest, from which the device kind's default tree follows. Then where a decode step's and a 64-node
  #    tree step's device time goes, op by op.
  local trees=()
  [[ -d $ROOT/heads/trees ]] && trees=(--tree "$ROOT/heads/trees")
  run_step demo-sweep-device 150 "${APP[@]}" bench --model "$DEMO_MODEL" --device "$DEVICE" --heads auto \
    --prompts "$BENCH_PROMPTS_FILE" --max-tokens "$BENCH_TOKENS" --sweep-trees "${trees[@]}" --json
  # 5. The HTTP server on the device under load (`serve`, driven by serve_check.py): one greedy request alone, then 8
  #    streaming requests at once, batched by the scheduler; the first prompt's reply is compared (on the host it must
  #    be the same), and the server must stop with exit code 0 on SIGTERM.
  local identical=()
  [[ $DEVICE == host ]] && identical=(--require-identical)
  run_step demo-serve-device 90 python3 "$SCRIPTS/serve_check.py" --model "$DEMO_MODEL" --device "$DEVICE" \
    --prompts "$BENCH_PROMPTS_FILE" --clients 8 --max-tokens "$BENCH_TOKENS" --deadline-s 75 "${identical[@]}" -- "${APP[@]}"
  # 6. The prefix cache on the device (`bench --prefix-cache`): requests sharing a 230-token opening, cold (cache
  #    cleared) and warm, alternating: time to first token of each, their ratio, warm tokens = cold.
  run_step demo-prefix-cache-device 60 "${APP[@]}" bench --model "$DEMO_MODEL" --device "$DEVICE" --heads auto \
    --prefix-cache --max-tokens 16 --runs 2 --json
  if ((OP_STEPS > 0)); then
    run_step demo-prompt 30 python3 "$SCRIPTS/make_model.py" --prompt-only --out "$WORK/prompt-demo" --prompt-tokens 64
    ours_op_times demo-ops "$DEMO_MODEL" "$WORK/prompt-demo/prompt_ids.json" 60
  else
    skip_step demo-ops "--op-steps 0"
  fi
}

# Structured output on the device (`bench --json-schema prompts/person.schema.json`: every token masked by the schema's
# grammar on the host, Medusa with forced text in its trees), after the random-weight shapes and only when its whole
# allowance is left: the issue's targets come first.
demo_bench_schema() {
  local want=60 left schema=$ROOT/prompts/person.schema.json
  if [[ -z $BENCH_PROMPTS_FILE || ! -f $DEMO_MODEL/model.safetensors ]] || ! ((HAVE_APP)); then
    skip_step demo-bench-schema-device "no demo model, prompts or app"
    return
  fi
  if [[ ! -f $schema ]]; then
    skip_step demo-bench-schema-device "no prompts/person.schema.json in this working tree"
    return
  fi
  left=$((DEADLINE - SECONDS - RESERVE_S))
  if ((left < want)); then
    skip_step demo-bench-schema-device "not started: ${left}s of the budget left, it wants ${want}s"
    return
  fi
  bench_on demo-bench-schema-device "$DEVICE" "$want" "" --json-schema "$schema"
}

# The host bench, last but for the compiled transformers runs, and only when its whole allowance is left.
demo_bench_host() {
  local want=90 left
  if [[ $DEVICE == host ]]; then
    skip_step demo-bench-host "the device is the host: demo-bench-device is this bench"
    return
  fi
  if [[ -z $BENCH_PROMPTS_FILE || ! -f $DEMO_MODEL/model.safetensors ]] || ! ((HAVE_APP)); then
    skip_step demo-bench-host "no demo model, prompts or app"
    return
  fi
  left=$((DEADLINE - SECONDS - RESERVE_S))
  if ((left < want)); then
    skip_step demo-bench-host "not started: ${left}s of the budget left, it wants ${want}s"
    return
  fi
  bench_on demo-bench-host host "$want"
}

# ---------------------------------------------------------------- the run
environment_report
HAVE_APP=0
if setup_app; then
  # Whatever `devices` says, profile is still tried: its own error message is the next thing to learn from.
  run_step devices 60 "${APP[@]}" devices
  HAVE_APP=1
fi

declare -A MODEL_OK=()
if ((DRY_RUN)); then
  note "== dry run: transformers side skipped (no torch here); the models are stories15M converted to f16"
  demo=$ROOT/models/stories15M
  for shape in "${SHAPE_LIST[@]}"; do
    if [[ $shape == demo ]]; then demo_stage; continue; fi
    if [[ ! -f $demo/stories15M.bin ]] && ((HAVE_APP)); then
      run_step fetch-demo 180 "${APP[@]}" fetch-demo --dir "$demo"
    fi
    dir=$WORK/models/$shape
    prompt_dir=$WORK/prompt-$shape
    rm -rf "$dir"
    model=$dir
    if ! ((HAVE_APP)) || ! run_step "make-$shape" 120 "${APP[@]}" convert --model "$demo" --out "$dir" --dtype f16; then
      note "WARNING: convert did not produce $dir; profiling the llama2.c checkpoint $demo directly instead"
      relabel "make-$shape" fallback
      model=$demo
    fi
    run_step "prompt-$shape" 30 python3 "$SCRIPTS/make_model.py" --prompt-only --out "$prompt_dir" --prompt-tokens "$PROMPT_TOKENS"
    if ((HAVE_APP)); then
      ours_profile "$shape" "$model" "$prompt_dir/prompt_ids.json" 120
      ours_kv16 "$shape" "$model" "$prompt_dir/prompt_ids.json" 60  # every backend stores binary16 KV
      if [[ $DEVICE != host ]] && ((OP_STEPS > 0)); then
        ours_op_times "ours-$shape-ops" "$model" "$prompt_dir/prompt_ids.json" 60
        ours_unfused "$shape" "$model" "$prompt_dir/prompt_ids.json" 60
        ours_f32cores "$shape" "$model" "$prompt_dir/prompt_ids.json" 60
        ours_tree_variant "ours-$shape-block-trees" "$model" "$prompt_dir/prompt_ids.json" 60 ILGPU_MEDUSA_TREE_ATTENTION=blocks
      else
        skip_step "ours-$shape-ops" "op times need an ILGPU device (--device opencl)"
        skip_step "ours-$shape-unfused" "fused kernels are an ILGPU device's (--device opencl)"
        skip_step "ours-$shape-f32cores" "tensor cores are an ILGPU device's (--device opencl)"
        skip_step "ours-$shape-block-trees" "attention kernels are an ILGPU device's (--device opencl)"
      fi
    else
      skip_step "ours-$shape" "no runnable app"
    fi
    skip_step "hf-eager-$shape" "dry run: transformers side skipped"
    skip_step "hf-compiled-$shape" "dry run: transformers side skipped"
  done
  [[ " ${SHAPE_LIST[*]} " == *" demo "* ]] && demo_bench_schema
  [[ " ${SHAPE_LIST[*]} " == *" demo "* ]] && demo_bench_host
else
  MODELS_ROOT=${GPU_BENCH_MODELS:-/tmp/models}
  mkdir -p "$MODELS_ROOT"
  free_gib=$(df -Pk "$MODELS_ROOT" | awk 'NR==2 {print int($4 / 1048576)}')
  if ((free_gib < 18)) && [[ -z ${GPU_BENCH_MODELS:-} ]]; then
    note "WARNING: only ${free_gib} GiB free under $MODELS_ROOT; using $ROOT/.gpu-bench-models"
    MODELS_ROOT=$ROOT/.gpu-bench-models
    mkdir -p "$MODELS_ROOT"
  fi
  declare -A MAKE_S=([7b]=180 [1b]=90) OURS_S=([7b]=180 [1b]=120) HF_S=([7b]=150 [1b]=90) COMPILED_S=([7b]=300 [1b]=200)
  declare -A OPS_S=([7b]=90 [1b]=60)
  # A shape is not started with less than this left of the budget: making its model and our profile need about that.
  declare -A SHAPE_MIN_S=([7b]=150 [1b]=75)
  LAST_SHAPE=""
  for shape in "${SHAPE_LIST[@]}"; do [[ $shape != demo ]] && LAST_SHAPE=$shape; done
  for shape in "${SHAPE_LIST[@]}"; do
    if [[ $shape == demo ]]; then demo_stage; continue; fi
    note "== shape $shape"
    dir=$MODELS_ROOT/$shape
    left=$((DEADLINE - SECONDS - RESERVE_S))
    if ((left < ${SHAPE_MIN_S[$shape]:-60})); then
      for step in make ours hf-eager; do
        skip_step "$step-$shape" "not started: ${left}s of the budget left, shape $shape wants at least ${SHAPE_MIN_S[$shape]:-60}s"
      done
      continue
    fi
    if run_step "make-$shape" "${MAKE_S[$shape]:-120}" python3 "$SCRIPTS/make_model.py" --shape "$shape" --out "$dir" \
         --prompt-tokens "$PROMPT_TOKENS" --tokenizer-dir "$KIT"; then
      MODEL_OK[$shape]=1
    fi
    if [[ -z ${MODEL_OK[$shape]:-} ]]; then
      skip_step "ours-$shape" "no model (make-$shape did not finish)"
      skip_step "hf-eager-$shape" "no model (make-$shape did not finish)"
      continue
    fi
    if ((HAVE_APP)); then
      ours_profile "$shape" "$dir" "$dir/prompt_ids.json" "${OURS_S[$shape]:-120}"
      if ((OP_STEPS > 0)); then
        ours_op_times "ours-$shape-ops" "$dir" "$dir/prompt_ids.json" "${OPS_S[$shape]:-60}"
      else
        skip_step "ours-$shape-ops" "--op-steps 0"
      fi
    else
      skip_step "ours-$shape" "no runnable app (see the unpack-runtime / devices steps)"
    fi
    # transformers next (the targets need it: its decode rate, its greedy tokens, its verdict on ours), then, for the
    # last shape of the list only (the 7B shape in a full run: the targets' shape), the kernel variants: the untimed
    # choices first (each may flip a default back), the measured comparisons last.
    ours_arg=()
    [[ -s $RAW/ours-$shape.out ]] && ours_arg=(--ours-output "$RAW/ours-$shape.out")
    run_step "hf-eager-$shape" "${HF_S[$shape]:-90}" python3 "$SCRIPTS/hf_reference.py" --model "$dir" --mode eager \
      --greedy-tokens "$GREEDY_TOKENS" --decode-tokens "$DECODE_TOKENS" --copy-bandwidth "${ours_arg[@]}" \
      --out "$RAW/hf-eager-$shape.json"
    if ((HAVE_APP)) && [[ $shape == "$LAST_SHAPE" ]]; then
      ours_decode_variant "ours-$shape-per-token-decode" "$dir" "$dir/prompt_ids.json" 60 ILGPU_MEDUSA_DECODE_ATTENTION=per-token
      ours_decode_variant "ours-$shape-gemv-two-rows" "$dir" "$dir/prompt_ids.json" 60 ILGPU_MEDUSA_GEMV_ROWS=2
      ours_tree_variant "ours-$shape-block-trees" "$dir" "$dir/prompt_ids.json" 60 ILGPU_MEDUSA_TREE_ATTENTION=blocks
      ours_tree_variant "ours-$shape-prefetch1" "$dir" "$dir/prompt_ids.json" 60 ILGPU_MEDUSA_TENSOR_PREFETCH=1
      ours_tree_variant "ours-$shape-fixed-splits" "$dir" "$dir/prompt_ids.json" 60 ILGPU_MEDUSA_TENSOR_SPLITS=fixed
      ours_kv16 "$shape" "$dir" "$dir/prompt_ids.json" 60
      ours_decode_variant "ours-$shape-copy-uploads" "$dir" "$dir/prompt_ids.json" 60 ILGPU_MEDUSA_SMALL_UPLOADS=0
      ours_unfused "$shape" "$dir" "$dir/prompt_ids.json" "${OPS_S[$shape]:-60}"
      ours_f32cores "$shape" "$dir" "$dir/prompt_ids.json" "${OPS_S[$shape]:-60}"
      ours_decode_variant "ours-$shape-narrow-gemv" "$dir" "$dir/prompt_ids.json" 60 ILGPU_MEDUSA_WIDE_GEMV=0
      ours_decode_variant "ours-$shape-block-decode" "$dir" "$dir/prompt_ids.json" 60 ILGPU_MEDUSA_DECODE_ATTENTION=blocks
    fi
  done
  [[ " ${SHAPE_LIST[*]} " == *" demo "* ]] && demo_bench_schema
  [[ " ${SHAPE_LIST[*]} " == *" demo "* ]] && demo_bench_host
  # Last, and only with the time that is left: static cache + torch.compile (compiling takes a minute or more).
  for shape in "${SHAPE_LIST[@]}"; do
    [[ $shape == demo ]] && continue
    if ((!COMPILE)); then skip_step "hf-compiled-$shape" "--no-compile"; continue; fi
    if [[ -z ${MODEL_OK[$shape]:-} ]]; then skip_step "hf-compiled-$shape" "no model"; continue; fi
    dir=$MODELS_ROOT/$shape
    limit=$(step_limit "${COMPILED_S[$shape]:-200}")
    run_step "hf-compiled-$shape" "$limit" python3 "$SCRIPTS/hf_reference.py" --model "$dir" --mode compiled \
      --decode-tokens "$DECODE_TOKENS" --time-budget-s "$((limit > 20 ? limit - 10 : limit))" \
      --out "$RAW/hf-compiled-$shape.json"
  done
fi

# ---------------------------------------------------------------- report
note "== report"
report_args=(--raw "$RAW" --shapes "$SHAPES" --mode "$MODE" --commit-file "$KIT/COMMIT" --out "$RESULTS/gpu-bench.json"
             --device "$DEVICE")
((DRY_RUN)) && report_args+=(--require-ours)
timeout 60 python3 "$SCRIPTS/report.py" "${report_args[@]}"
report_rc=$?
case $report_rc in
  0) ;;
  3) FAILED+=("demo-checks") ;;  # the report ran; a demo check failed (conformance, greedy tokens differ)
  *) FAILED+=("report") ;;
esac
tar -czf "$RESULTS/raw.tar.gz" -C "$WORK" raw 2>/dev/null
mapfile -t FAILED < <(printf '%s\n' "${FAILED[@]}" | grep . || true)
note "done in $((SECONDS - START))s; results in $RESULTS (gpu-bench.json, run.log, raw.tar.gz)"
if ((${#FAILED[@]})); then
  note "failed: ${FAILED[*]}"
  status=1
else
  status=0
fi
exec >&- 2>&-
wait "$TEE_PID" 2>/dev/null
exit "$status"
