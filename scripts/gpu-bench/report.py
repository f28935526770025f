#!/usr/bin/env python3
"""
Merges what run.sh left in its raw folder into one JSON file and prints one table per model shape.

  python3 scripts/gpu-bench/report.py --raw /tmp/gpu-bench/raw --shapes 7b,1b --out "$OUT/gpu-bench.json"

Inputs (all optional; whatever is missing is reported as missing): steps.tsv (one line per step: name, status, exit
code, seconds, limit), env.txt (key=value), nvidia-smi.csv, COMMIT, and per shape S: make-S.out (make_model.py's
JSON), ours-S.out (our `profile --json` stdout), hf-eager-S.json and hf-compiled-S.json (hf_reference.py), and the
.err file of each step (its stderr; the tail of a failed step's is put in the JSON).
"""
from __future__ import annotations

import argparse
import datetime
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gpu_bench_common import extract_json_object, load_json, read_text, write_json  # noqa: E402

# The fields our `profile --json` prints (the names the integrator's command uses).
OURS_FIELDS = ("device", "weights_bytes", "prefill_tokens", "prefill_seconds", "prefill_tokens_per_second",
               "decode_tokens_per_second", "decode_step_ms", "tree_step_ms", "weight_bandwidth_gb_per_s",
               "copy_bandwidth_gb_per_s", "greedy_tokens")
TREE_SIZES = ("1", "4", "16", "64")
# Targets: (comparison, threshold, what it says).
TARGETS = {
    "weight_over_copy_bandwidth": (">=", 0.70, "decode reads the weights at >= 70% of the device copy bandwidth"),
    "tree_64_over_1": ("<=", 1.5, "a 64-node tree step costs <= 1.5 x a 1-token step"),
    "greedy_consistent": ("==", True, "every greedy token is transformers' argmax or a near-tie (teacher-forced)"),
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="merge the GPU benchmark results and print the table")
    p.add_argument("--raw", required=True, help="run.sh's raw folder")
    p.add_argument("--shapes", default="7b,1b", help="comma-separated shapes, in run order")
    p.add_argument("--mode", default="gpu", choices=["gpu", "dry-run"])
    p.add_argument("--commit-file", default=".gpu-kit/COMMIT")
    p.add_argument("--out", required=True, help="merged JSON file")
    p.add_argument("--require-ours", action="store_true",
                   help="exit 1 unless every shape has our profile JSON with all its fields (the dry run's check)")
    return p.parse_args(argv)


def read_steps(raw):
    steps = []
    for line in read_text(os.path.join(raw, "steps.tsv")).splitlines():
        parts = line.split("\t")
        if len(parts) >= 4:
            steps.append({"name": parts[0], "status": parts[1], "rc": int(parts[2]) if parts[2].lstrip("-").isdigit() else parts[2],
                          "seconds": int(parts[3]) if parts[3].isdigit() else parts[3],
                          "limit_seconds": int(parts[4]) if len(parts) > 4 and parts[4].isdigit() else None})
    return steps


def read_env(raw):
    env = {}
    for line in read_text(os.path.join(raw, "env.txt")).splitlines():
        if "=" in line:
            key, value = line.split("=", 1)
            env[key.strip()] = value.strip()
    return env


def read_gpu(raw, env):
    gpu = {}
    line = next((l for l in read_text(os.path.join(raw, "nvidia-smi.csv")).splitlines() if l.strip()), "")
    parts = [p.strip() for p in line.split(",")]
    if len(parts) >= 3:
        gpu = {"name": parts[0], "driver": parts[1], "memory_total": parts[2]}
    if env.get("cuda_driver_api"):
        gpu["cuda_version"] = env["cuda_driver_api"]
    return gpu


def read_commit(path):
    lines = read_text(path).split()
    return (lines[0] if lines else None), ("dirty" in lines[1:])


def number(x):
    return x if isinstance(x, (int, float)) and not isinstance(x, bool) else None


def ratio(a, b):
    a, b = number(a), number(b)
    return round(a / b, 3) if a is not None and b else None


def verdict(key, value):
    if value is None:
        return "n/a"
    op, threshold, _ = TARGETS[key]
    ok = value >= threshold if op == ">=" else value <= threshold if op == "<=" else value == threshold
    return "met" if ok else "missed"


def step_status(steps, name):
    for s in steps:
        if s["name"] == name:
            return s["status"]
    return "not run"


def summarize(shape, ours, hf_eager, hf_compiled, torch_copy):
    """The figures of one shape, with their targets."""
    s = {}
    ours = ours or {}
    he, hc = hf_eager or {}, hf_compiled or {}
    s["prefill_tokens"] = ours.get("prefill_tokens")
    s["prefill_tokens_per_second"] = {"ours": number(ours.get("prefill_tokens_per_second")),
                                      "hf_eager": number((he.get("prefill") or {}).get("tokens_per_second"))}
    decode = {"ours": number(ours.get("decode_tokens_per_second")),
              "hf_eager": number((he.get("decode") or {}).get("tokens_per_second")),
              "hf_compiled": number((hc.get("compiled") or {}).get("decode_tokens_per_second"))}
    s["decode_tokens_per_second"] = decode
    s["decode_ours_over_hf_eager"] = ratio(decode["ours"], decode["hf_eager"])
    s["decode_ours_over_hf_compiled"] = ratio(decode["ours"], decode["hf_compiled"])

    weight_bw, copy_bw = number(ours.get("weight_bandwidth_gb_per_s")), number(ours.get("copy_bandwidth_gb_per_s"))
    bw = {"weight_gb_per_s": weight_bw, "copy_gb_per_s_ours": copy_bw, "copy_gb_per_s_torch": torch_copy,
          "weight_over_copy": ratio(weight_bw, copy_bw), "weight_over_torch_copy": ratio(weight_bw, torch_copy)}
    # Cross-check of our own figure: weight bytes / decode step time.
    if number(ours.get("weights_bytes")) and number(ours.get("decode_step_ms")):
        bw["weights_bytes_over_decode_step_gb_per_s"] = round(ours["weights_bytes"] / (ours["decode_step_ms"] / 1e3) / 1e9, 1)
    bw["target"] = verdict("weight_over_copy_bandwidth", bw["weight_over_copy"])
    s["bandwidth"] = bw

    tree = ours.get("tree_step_ms") if isinstance(ours.get("tree_step_ms"), dict) else {}
    tree = {str(k): number(v) for k, v in tree.items()}
    s["tree_step_ms"] = {k: tree.get(k) for k in TREE_SIZES}
    s["tree_64_over_1"] = ratio(tree.get("64"), tree.get("1"))
    s["tree_target"] = verdict("tree_64_over_1", s["tree_64_over_1"])

    g = {"compared": 0, "identical": None, "first_mismatch_index": None}
    mine, theirs = ours.get("greedy_tokens"), (he.get("greedy") or {}).get("tokens")
    if isinstance(mine, list) and isinstance(theirs, list) and mine and theirs:
        n = min(len(mine), len(theirs))
        mismatch = next((i for i in range(n) if int(mine[i]) != int(theirs[i])), None)
        g.update(compared=n, identical=mismatch is None and len(mine) == len(theirs), first_mismatch_index=mismatch)
        if mismatch is None and len(mine) != len(theirs):
            g["first_mismatch_index"] = n
    tf = he.get("teacher_forced")
    if tf:
        g["teacher_forced"] = {k: tf.get(k) for k in ("checked_tokens", "argmax", "near_ties", "wrong", "first_wrong_index", "consistent")}
        g["target"] = verdict("greedy_consistent", tf.get("consistent"))
    else:
        g["target"] = "met" if g["identical"] else "n/a"
    s["greedy"] = g
    return s


def fmt(x, digits=1):
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:,.{digits}f}"
    return f"{x:,}" if isinstance(x, int) else str(x)


def table(shape, summary, status, model, mode):
    """One block of text: a header, the step states, then one row per figure (ours, HF eager, HF compiled, target)."""
    skipped = "skipped" if mode == "dry-run" else None
    hf = lambda v, digits=1: skipped or fmt(v, digits)  # noqa: E731
    params, size = (model or {}).get("parameters"), (model or {}).get("safetensors_bytes")
    head = f"shape {shape}"
    if params:
        head += f": {params / 1e9:.2f} B parameters" + (f", {size / 1e9:.2f} GB fp16" if size else "")
    p, d, b = summary["prefill_tokens_per_second"], summary["decode_tokens_per_second"], summary["bandwidth"]
    t, g = summary["tree_step_ms"], summary["greedy"]
    x = lambda r: f"{r:.2f}x" if r else "-"  # noqa: E731
    rows = [
        ["figure", "ours", "HF eager", "HF compiled", "target"],
        [f"prefill tok/s ({fmt(summary['prefill_tokens'])} tokens)", fmt(p["ours"]), hf(p["hf_eager"]), "", ""],
        ["decode tok/s (batch 1)", fmt(d["ours"]), hf(d["hf_eager"]), hf(d["hf_compiled"]), ""],
        ["decode ours / HF", "", x(summary["decode_ours_over_hf_eager"]), x(summary["decode_ours_over_hf_compiled"]), "(no target)"],
        ["weight GB/s / copy GB/s", f"{fmt(b['weight_gb_per_s'], 0)} / {fmt(b['copy_gb_per_s_ours'], 0)}", "", "",
         f"ratio {fmt(b['weight_over_copy'], 2)} >= 0.70: {b['target']}"],
        ["  torch copy GB/s (read+write)", "", hf(b["copy_gb_per_s_torch"], 0), "",
         f"weight / torch copy {fmt(b['weight_over_torch_copy'], 2)}"],
    ]
    if "weights_bytes_over_decode_step_gb_per_s" in b:
        rows.append(["  check: weight bytes / step", fmt(b["weights_bytes_over_decode_step_gb_per_s"], 0), "", "", "GB/s"])
    rows.append(["tree step ms (1/4/16/64 nodes)", "/".join(fmt(t[k], 2) for k in TREE_SIZES), "", "",
                 f"64/1 = {fmt(summary['tree_64_over_1'], 2)} <= 1.5: {summary['tree_target']}"])
    if g["identical"] is None:
        same = "not compared" + (" (dry run)" if mode == "dry-run" else "")
    else:
        same = "yes" if g["identical"] else f"no, first mismatch at {g['first_mismatch_index']}"
    rows.append([f"greedy tokens identical ({g['compared']})", same, "", "", ""])
    if "teacher_forced" in g:
        tf = g["teacher_forced"]
        rows.append(["  teacher-forced vs HF logits", f"{tf['argmax']} argmax, {tf['near_ties']} near-tie, {tf['wrong']} wrong",
                     "", "", f"all consistent: {g['target']}"])
    widths = [max(len(str(r[i])) for r in rows) for i in range(5)]
    lines = [head, "  steps: " + ", ".join(f"{k} {v}" for k, v in status.items())]
    for r in rows:
        lines.append("  " + "  ".join([str(r[0]).ljust(widths[0])] + [str(c).rjust(w) for c, w in zip(r[1:4], widths[1:4])]
                                      + [str(r[4])]).rstrip())
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    raw = args.raw
    shapes = [s for s in args.shapes.split(",") if s]
    steps = read_steps(raw)
    env = read_env(raw)
    gpu = read_gpu(raw, env)
    commit, dirty = read_commit(args.commit_file)
    result = {"schema": "ilgpu-medusa-gpu-bench/1", "mode": args.mode,
              "created_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
              "commit": commit, "commit_dirty": dirty, "gpu": gpu, "environment": env, "steps": steps,
              "targets": {k: {"comparison": v[0], "threshold": v[1], "meaning": v[2]} for k, v in TARGETS.items()},
              "conventions": {
                  "weight_bandwidth": "weight bytes read per decode step / decode step time (ours)",
                  "copy_bandwidth": "(bytes read + bytes written) / time of a device-to-device copy; 1 GB = 1e9 bytes",
                  "tokens_per_second": "batch 1; decode measured after the prompt, warm-up excluded"},
              "shapes": {}}
    missing_ours = []
    # The torch copy bandwidth is a property of the GPU: any shape's measurement serves a shape that lacks one.
    copies = [((load_json(os.path.join(raw, f"hf-eager-{s}.json")) or {}).get("copy_bandwidth") or {}).get("gb_per_s")
              for s in shapes]
    torch_copy_any = next((c for c in copies if c), None)
    blocks = []
    for shape in shapes:
        model = extract_json_object(read_text(os.path.join(raw, f"make-{shape}.out")))
        ours = extract_json_object(read_text(os.path.join(raw, f"ours-{shape}.out")))
        he = load_json(os.path.join(raw, f"hf-eager-{shape}.json"))
        hc = load_json(os.path.join(raw, f"hf-compiled-{shape}.json"))
        copy = ((he or {}).get("copy_bandwidth") or {}).get("gb_per_s") or torch_copy_any
        summary = summarize(shape, ours, he, hc, copy)
        absent = [f for f in OURS_FIELDS if ours is None or f not in ours]
        if absent:
            missing_ours.append(f"{shape}: {'no JSON' if ours is None else 'missing ' + ', '.join(absent)}")
        names = {"make": f"make-{shape}", "ours": f"ours-{shape}", "hf eager": f"hf-eager-{shape}",
                 "hf compiled": f"hf-compiled-{shape}"}
        status = {k: step_status(steps, v) for k, v in names.items()}
        errors = {}
        for label, name in names.items():
            if status[label] in ("failed", "timeout"):
                errors[name] = read_text(os.path.join(raw, f"{name}.err"), 2500)
        for label, doc in (("hf_eager", he), ("hf_compiled", hc)):
            if doc and doc.get("errors"):
                errors[f"{label} stages"] = doc["errors"]
        result["shapes"][shape] = {"summary": summary, "step_status": status, "model": model, "ours": ours,
                                   "ours_missing_fields": absent, "hf_eager": he, "hf_compiled": hc, "errors": errors}
        blocks.append(table(shape, summary, status, model, args.mode))
    failed = [s for s in steps if s["status"] in ("failed", "timeout")]
    result["failed_steps"] = [s["name"] for s in failed]
    write_json(args.out, result)

    gpu_line = ", ".join(f"{k} {v}" for k, v in gpu.items()) if gpu else "no nvidia-smi reading"
    print("=" * 100)
    print(f"IlgpuMedusa GPU benchmark ({args.mode}) - commit {commit or '?'}{' (dirty)' if dirty else ''}")
    print(f"GPU: {gpu_line}")
    print("\n\n".join(blocks))
    if failed:
        print("failed steps: " + ", ".join(f"{s['name']} ({s['status']}, rc {s['rc']})" for s in failed))
    if missing_ours:
        print("our profile output incomplete: " + "; ".join(missing_ours))
    print(f"results: {args.out}")
    print("=" * 100)
    return 1 if args.require_ours and missing_ours else 0


if __name__ == "__main__":
    sys.exit(main())
