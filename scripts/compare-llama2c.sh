#!/usr/bin/env bash
# Side by side on this machine: our autoregressive and Medusa decoding (one `bench` run, alternating prompt by prompt),
# then llama2.c over the same prompts, and the ratios. llama2.c is NOT part of this repository: build Karpathy's run.c
# yourself (gcc -Ofast -fopenmp -march=native run.c -lm -o run) and pass the binary.
#
#   scripts/compare-llama2c.sh /path/to/llama2.c/run [extra bench options, e.g. --tree dynamic-4]
#
# Prints one JSON object: ours (AR and Medusa tok/s, accepted tokens per step), llama2.c (median "achieved tok/s" of the
# 20 prompts, 2 OpenMP threads, greedy, -n 128) and the ratios. Needs python3 for the JSON.
set -euo pipefail
if [[ $# -lt 1 || ! -x "$1" ]]; then
  echo "usage: $0 LLAMA2C_RUN_BINARY [bench options]  (build it: gcc -Ofast -fopenmp -march=native run.c -lm -o run)" >&2
  exit 2
fi
run="$1"; shift
root="$(cd "$(dirname "$0")/.." && pwd)"
model="$root/models/stories15M"
prompts="$root/prompts/stories-20.txt"
cli=(dotnet run --project "$root/src/IlgpuMedusa.Cli" -c Release --)
for f in "$model/stories15M.bin" "$model/tokenizer.bin" "$prompts"; do
  [[ -f "$f" ]] || { echo "missing $f (the demo model: ${cli[*]} fetch-demo)" >&2; exit 1; }
done
ours="$(mktemp)"; theirs="$(mktemp)"
trap 'rm -f "$ours" "$theirs"' EXIT
echo "[compare] ours: bench --device host $* ..." >&2
"${cli[@]}" bench --model "$model" --device host --prompts "$prompts" --max-tokens 128 --json "$@" > "$ours"
echo "[compare] llama2.c: $run over the same prompts ..." >&2
while IFS= read -r prompt; do
  [[ -z "${prompt// }" || "${prompt#"${prompt%%[! ]*}"}" == \#* ]] && continue  # blank lines and # comments, as bench skips them
  OMP_NUM_THREADS=2 "$run" "$model/stories15M.bin" -z "$model/tokenizer.bin" -t 0 -n 128 -i "$prompt" 2>&1 >/dev/null \
    | sed -n 's/^achieved tok\/s: //p' >> "$theirs"
done < "$prompts"
python3 - "$ours" "$theirs" <<'EOF'
import json, statistics, sys
ours = json.load(open(sys.argv[1]))
rates = [float(x) for x in open(sys.argv[2]) if x.strip()]
if not rates:
    sys.exit("llama2.c printed no 'achieved tok/s' line")
configs = ours["configurations"]
ar = next(c for c in configs if c["name"] == "autoregressive")
medusa = [c for c in configs if c["name"] != "autoregressive"]
l2c = statistics.median(rates)
out = {
    "llama2c_median_tokens_per_second": round(l2c, 1),
    "llama2c_prompts": len(rates),
    "autoregressive_tokens_per_second": ar["decode_tokens_per_second"],
    "autoregressive_vs_llama2c": round(ar["decode_tokens_per_second"] / l2c, 3),
    "medusa": [{"tree": c["name"], "tokens_per_second": c["decode_tokens_per_second"], "mean_accepted": c.get("mean_accepted"),
                "vs_autoregressive": c["speedup"], "vs_llama2c": round(c["decode_tokens_per_second"] / l2c, 3),
                "identical": c.get("identical_to_autoregressive")} for c in medusa],
}
print(json.dumps(out, indent=2))
EOF
