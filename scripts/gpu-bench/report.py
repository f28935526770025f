#!/usr/bin/env python3
"""
Merges what run.sh left in its raw folder into one JSON file and prints one table per model shape.

  python3 scripts/gpu-bench/report.py --raw /tmp/gpu-bench/raw --shapes demo,1b,7b --device cuda --out "$OUT/gpu-bench.json"

Inputs (all optional; whatever is missing is reported as missing): steps.tsv (one line per step: name, status, exit
code, seconds, limit), env.txt (key=value), nvidia-smi.csv, COMMIT, and per shape S: make-S.out (make_model.py's
JSON), ours-S.out (our `profile --json` stdout), hf-eager-S.json and hf-compiled-S.json (hf_reference.py), and the
.err file of each step (its stderr; the tail of a failed step's is put in the JSON). The shape "demo" is the demo
stage: demo-conformance.out (the conformance console's log), demo-greedy-device.out and demo-greedy-host.out
(`generate --json`), demo-bench-device.out and demo-bench-host.out (`bench --json`), demo-serve-device.out
(serve_check.py's JSON).

Exit code: 0; 1 with --require-ours when a figure the dry run checks is missing; 3 when a demo check failed
(conformance failures, or greedy tokens that differ between the device and the host).
"""
from __future__ import annotations

import argparse
import datetime
import os
import re
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
    "greedy_identical_fp32": ("==", True, "our greedy tokens equal transformers' computed in float32 from the same fp16 "
                                          "weights (our activations and sums are float32)"),
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="merge the GPU benchmark results and print the table")
    p.add_argument("--raw", required=True, help="run.sh's raw folder")
    p.add_argument("--shapes", default="7b,1b", help="comma-separated shapes, in run order")
    p.add_argument("--mode", default="gpu", choices=["gpu", "dry-run"])
    p.add_argument("--device", default="cuda", help="the device the demo stage ran on (beside the host)")
    p.add_argument("--commit-file", default=".gpu-kit/COMMIT")
    p.add_argument("--out", required=True, help="merged JSON file")
    p.add_argument("--require-ours", action="store_true",
                   help="exit 1 unless every shape has our profile JSON with all its fields and the demo stage "
                        "every figure (the dry run's check)")
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

    mine = ours.get("greedy_tokens")
    g = compare_tokens(mine, (he.get("greedy") or {}).get("tokens"))
    tf = he.get("teacher_forced")
    if tf:
        g["teacher_forced"] = {k: tf.get(k) for k in TEACHER_FORCED_FIELDS}
        g["target"] = verdict("greedy_consistent", tf.get("consistent"))
    else:
        g["target"] = "met" if g["identical"] else "n/a"
    # The float32 reference (hf_reference.py runs it last): identical tokens are the target there.
    fp32 = compare_tokens(mine, (he.get("greedy_fp32") or {}).get("tokens"))
    tf32 = he.get("teacher_forced_fp32")
    if tf32:
        fp32["teacher_forced"] = {k: tf32.get(k) for k in TEACHER_FORCED_FIELDS}
    fp32["target"] = verdict("greedy_identical_fp32", fp32["identical"])
    g["fp32"] = fp32
    s["greedy"] = g
    return s


TEACHER_FORCED_FIELDS = ("checked_tokens", "argmax", "near_ties", "wrong", "first_wrong_index", "consistent")


def compare_tokens(mine, theirs):
    """Token lists compared: how many, identical (None when either is missing), first mismatching index."""
    g = {"compared": 0, "identical": None, "first_mismatch_index": None}
    if isinstance(mine, list) and isinstance(theirs, list) and mine and theirs:
        n = min(len(mine), len(theirs))
        mismatch = next((i for i in range(n) if int(mine[i]) != int(theirs[i])), None)
        g.update(compared=n, identical=mismatch is None and len(mine) == len(theirs), first_mismatch_index=mismatch)
        if mismatch is None and len(mine) != len(theirs):
            g["first_mismatch_index"] = n
    return g


DEMO_STEPS = {"conformance": "demo-conformance", "greedy device": "demo-greedy-device", "greedy host": "demo-greedy-host",
              "bench device": "demo-bench-device", "bench device copy uploads": "demo-bench-device-copy-uploads",
              "bench host": "demo-bench-host", "bench schema device": "demo-bench-schema-device", "sweep device": "demo-sweep-device",
              "serve device": "demo-serve-device", "prefix cache device": "demo-prefix-cache-device", "op times": "demo-ops"}


def summarize_op_times(doc):
    """`profile --op-times --json`: per phase (decode, tree-N) the device span per step, split into ops and host wait."""
    times = (doc or {}).get("op_times") if isinstance(doc, dict) else None
    if not isinstance(times, dict) or not times:
        return None
    return {phase: {"span_ms_per_step": number(v.get("span_ms_per_step")), "ops_ms_per_step": number(v.get("ops_ms_per_step")),
                    "host_wait_ms_per_step": number(v.get("host_wait_ms_per_step")), "steps": v.get("steps"),
                    "ops": sorted((o for o in v.get("ops", []) if isinstance(o, dict)),
                                  key=lambda o: -(number(o.get("ms_per_step")) or 0))}
            for phase, v in times.items() if isinstance(v, dict)}


def op_times_lines(ops, indent="  ", top=8):
    """Text lines for summarize_op_times: the phase totals, then the costliest ops."""
    lines = []
    for phase, v in (ops or {}).items():
        span = v["span_ms_per_step"] or 0
        lines.append(f"{indent}op times, {phase} (device ms per step): span {fmt(v['span_ms_per_step'], 3)} = ops"
                     f" {fmt(v['ops_ms_per_step'], 3)} + waiting for the host {fmt(v['host_wait_ms_per_step'], 3)}")
        for o in v["ops"][:top]:
            ms = number(o.get("ms_per_step")) or 0
            gbs = number(o.get("weight_gb_per_s"))
            lines.append(f"{indent}  {str(o.get('op')):<13} {str(o.get('shape')):<30} {fmt(o.get('calls_per_step'))}x"
                         f" {fmt(number(o.get('us_per_call')), 1)} us = {ms:.3f} ms ({ms / span:.0%})"
                         + (f", {gbs:,.0f} GB/s" if gbs else "") if span else "")
    return lines


def summarize_unfused(fused, unfused):
    """Our profile with the fused kernels (the main run) next to the same profile with them off (ILGPU_MEDUSA_FUSED=0)."""
    if not isinstance(fused, dict) or not isinstance(unfused, dict):
        return None
    trees = {k: {"fused": number((fused.get("tree_step_ms") or {}).get(k)), "separate": number(v)}
             for k, v in (unfused.get("tree_step_ms") or {}).items()}
    fd, ud = number(fused.get("decode_tokens_per_second")), number(unfused.get("decode_tokens_per_second"))
    return {"decode_tokens_per_second": {"fused": fd, "separate": ud, "fused_over_separate": ratio(fd, ud)},
            "tree_step_ms": trees, "separate_device": unfused.get("device"),
            "greedy_tokens_equal": (fused.get("greedy_tokens") == unfused.get("greedy_tokens")
                                    if fused.get("greedy_tokens") and unfused.get("greedy_tokens") else None)}


def summarize_tensor(main, variant):
    """Our profile (tensor cores for F16 matmuls of T >= 2, where the device has them) next to the same profile with
    ILGPU_MEDUSA_TENSOR_CORES=off (float32-core skinny and tiled kernels)."""
    if not isinstance(main, dict) or not isinstance(variant, dict):
        return None
    trees = {k: {"tensor": number((main.get("tree_step_ms") or {}).get(k)), "f32": number(v)}
             for k, v in (variant.get("tree_step_ms") or {}).items()}
    mp, vp = number(main.get("prefill_tokens_per_second")), number(variant.get("prefill_tokens_per_second"))
    return {"prefill_tokens_per_second": {"tensor": mp, "f32": vp, "tensor_over_f32": ratio(mp, vp)},
            "tree_step_ms": trees,
            "greedy_tokens_equal": (main.get("greedy_tokens") == variant.get("greedy_tokens")
                                    if main.get("greedy_tokens") and variant.get("greedy_tokens") else None)}


def tensor_lines(u, indent="  "):
    """One line: prefill and tree steps with tensor cores and with float32 cores."""
    if not u:
        return []
    p = u["prefill_tokens_per_second"]
    trees = ", ".join(f"{k} nodes {fmt(v['tensor'], 2)} vs {fmt(v['f32'], 2)} ms" for k, v in u["tree_step_ms"].items())
    same = {True: "same greedy tokens", False: "greedy tokens differ", None: "greedy tokens not compared"}[u["greedy_tokens_equal"]]
    x = f"{p['tensor_over_f32']:.2f}x" if p["tensor_over_f32"] else "-"
    return [f"{indent}tensor cores vs float32 cores: prefill {fmt(p['tensor'])} vs {fmt(p['f32'])} tok/s ({x}); {trees}; {same}"]


def variant_lines(main, variants, indent="  "):
    """One line per decode variant: its decode rate and 1-node step against the main profile's."""
    lines = []
    if not isinstance(main, dict):
        return lines
    md = number(main.get("decode_tokens_per_second"))
    for label, doc in variants:
        if not isinstance(doc, dict):
            continue
        vd = number(doc.get("decode_tokens_per_second"))
        r = ratio(md, vd)
        lines.append(f"{indent}decode, default vs {label}: {fmt(md)} vs {fmt(vd)} tok/s ({f'{r:.2f}x' if r else '-'}); "
                     f"1-node step {fmt(number((main.get('tree_step_ms') or {}).get('1')), 2)} vs "
                     f"{fmt(number((doc.get('tree_step_ms') or {}).get('1')), 2)} ms"
                     + (f"; host waits per step {fmt(number(main.get('host_waits_per_decode_step')), 2)} vs"
                        f" {fmt(number(doc.get('host_waits_per_decode_step')), 2)}"
                        if number(doc.get("host_waits_per_decode_step")) is not None else ""))
    return lines


def hf_agreement(doc, hf):
    """Greedy tokens of a variant against transformers' fp16 ones (which keep keys and values in fp16 too): a phrase."""
    g = compare_tokens((doc or {}).get("greedy_tokens"), ((hf or {}).get("greedy") or {}).get("tokens"))
    if g["identical"] is None:
        return None
    return "identical to transformers fp16" if g["identical"] else f"first mismatch with transformers fp16 at {g['first_mismatch_index']}"


def tree_variant_lines(main, variants, indent="  ", hf=None):
    """One line per tree variant: decode, each tree step and the greedy tokens against the main profile's (the binary16
    KV variant also against transformers fp16)."""
    lines = []
    if not isinstance(main, dict):
        return lines
    for label, doc in variants:
        if not isinstance(doc, dict):
            continue
        md, vd = number(main.get("decode_tokens_per_second")), number(doc.get("decode_tokens_per_second"))
        trees = ", ".join(f"{k} nodes {fmt(number((main.get('tree_step_ms') or {}).get(k)), 2)} vs {fmt(number(v), 2)} ms"
                          for k, v in (doc.get("tree_step_ms") or {}).items())
        same = (main.get("greedy_tokens") == doc.get("greedy_tokens")) if main.get("greedy_tokens") and doc.get("greedy_tokens") else None
        # A binary16 KV cache rounds keys and values: other greedy tokens there are possible, not a kernel fault.
        differ = "greedy tokens differ (the cache rounds: possible)" if "binary16" in label else "greedy tokens DIFFER"
        versus_hf = hf_agreement(doc, hf) if "binary16" in label else None
        lines.append(f"{indent}default vs {label}: decode {fmt(md)} vs {fmt(vd)} tok/s; {trees}; "
                     + {True: "same greedy tokens", False: differ, None: "greedy tokens not compared"}[same]
                     + (f"; {versus_hf}" if versus_hf else ""))
    return lines


def unfused_lines(u, indent="  "):
    """One line: decode and tree steps with the fused kernels and without."""
    if not u:
        return []
    d = u["decode_tokens_per_second"]
    trees = ", ".join(f"{k} nodes {fmt(v['fused'], 2)} vs {fmt(v['separate'], 2)} ms" for k, v in u["tree_step_ms"].items())
    same = {True: "same greedy tokens", False: "greedy tokens DIFFER", None: "greedy tokens not compared"}[u["greedy_tokens_equal"]]
    x = f"{d['fused_over_separate']:.2f}x" if d["fused_over_separate"] else "-"
    return [f"{indent}fused kernels vs separate ops: decode {fmt(d['fused'])} vs {fmt(d['separate'])} tok/s ({x}); {trees}; {same}"]


def summarize_sweep(doc):
    """`bench --sweep-trees --json`: each configuration's rate, speedup, accepted length and step cost; the fastest."""
    if not isinstance(doc, dict) or not isinstance(doc.get("configurations"), list):
        return None
    rows = [{"name": r.get("name"), "tree_nodes": r.get("tree_nodes"), "tokens_per_second": number(r.get("decode_tokens_per_second")),
             "speedup": number(r.get("speedup")), "mean_accepted": number(r.get("mean_accepted")),
             "ms_per_step": number(r.get("ms_per_step")), "identical_to_autoregressive": r.get("identical_to_autoregressive")}
            for r in doc["configurations"] if isinstance(r, dict)]
    return {"device": doc.get("device"), "recommended_tree": doc.get("recommended_tree"), "configurations": rows}


def parse_conformance(text):
    """The conformance console's count line ("conformance: 33 passed, 0 failed") and its FAIL lines."""
    m = None
    for m in re.finditer(r"conformance: (\d+) passed, (\d+) failed", text):
        pass
    fails = [line.split("FAIL", 1)[1].strip()[:300] for line in text.splitlines() if " FAIL " in line][:20]
    backend = next((line.split("backend:", 1)[1].strip()[:200] for line in text.splitlines() if "backend:" in line), None)
    if m is None:
        return {"passed": None, "failed": None, "failures": fails, "backend": backend}
    return {"passed": int(m.group(1)), "failed": int(m.group(2)), "failures": fails, "backend": backend}


def summarize_bench(doc):
    """AR vs Medusa from one `bench --json`: the first configuration is autoregressive, the next the Medusa tree."""
    if not isinstance(doc, dict) or not isinstance(doc.get("configurations"), list) or not doc["configurations"]:
        return None
    rows = doc["configurations"]
    ar = rows[0]
    medusa = next((r for r in rows[1:] if isinstance(r, dict)), None) or {}
    ar_rate, medusa_rate = number(ar.get("decode_tokens_per_second")), number(medusa.get("decode_tokens_per_second"))
    return {"device": doc.get("device"), "heads": doc.get("heads"), "prompts": doc.get("prompts"),
            "max_tokens": doc.get("max_tokens"), "ar_tokens_per_second": ar_rate,
            "medusa_tokens_per_second": medusa_rate, "medusa_over_ar": ratio(medusa_rate, ar_rate),
            "tree": medusa.get("name"), "tree_nodes": medusa.get("tree_nodes"),
            "mean_accepted": number(medusa.get("mean_accepted")), "head_hit_rates": medusa.get("head_hit_rates"),
            "forced_tokens": medusa.get("forced_tokens"),
            "identical_to_autoregressive": medusa.get("identical_to_autoregressive"),
            "ms_per_step": {"ar": number(ar.get("ms_per_step")), "medusa": number(medusa.get("ms_per_step"))},
            "host_waits_per_step": {"ar": number(ar.get("host_waits_per_step")), "medusa": number(medusa.get("host_waits_per_step"))},
            "host_drains_per_step": {"ar": number(ar.get("host_drains_per_step")), "medusa": number(medusa.get("host_drains_per_step"))},
            "prefill_tokens_per_second_median": number(doc.get("prefill_tokens_per_second_median"))}


def waits_text(b):
    """", host waits (drains) per step AR a (b), Medusa c (d)" when the bench counted them (ILGPU devices), else ""."""
    w, d = (b or {}).get("host_waits_per_step") or {}, (b or {}).get("host_drains_per_step") or {}
    if w.get("ar") is None:
        return ""
    return (f"; host waits (drains) per step: AR {fmt(w['ar'], 2)} ({fmt(d.get('ar'), 2)}),"
            f" Medusa {fmt(w.get('medusa'), 2)} ({fmt(d.get('medusa'), 2)})")


def summarize_demo(raw, steps, device):
    """The demo stage: conformance on the device, greedy device vs host, decode rates, the benches."""
    status = {k: step_status(steps, v) for k, v in DEMO_STEPS.items()}
    conformance = parse_conformance(read_text(os.path.join(raw, "demo-conformance.out")))
    conformance["device"] = "cpu-emulator" if device in ("host", "cpu-emulator") else device
    dev = extract_json_object(read_text(os.path.join(raw, "demo-greedy-device.out"))) or {}
    host = extract_json_object(read_text(os.path.join(raw, "demo-greedy-host.out"))) or {}
    mine, theirs = dev.get("tokens"), host.get("tokens")
    g = {"prompt": None, "compared": 0, "identical": None, "first_mismatch_index": None,
         "device_tokens": mine if isinstance(mine, list) else None, "host_tokens": theirs if isinstance(theirs, list) else None,
         "device_text": dev.get("text"), "host_text": host.get("text"),
         "finish_reason": {"device": dev.get("finish_reason"), "host": host.get("finish_reason")}}
    if isinstance(mine, list) and isinstance(theirs, list) and mine and theirs:
        n = min(len(mine), len(theirs))
        mismatch = next((i for i in range(n) if mine[i] != theirs[i]), None)
        if mismatch is None and len(mine) != len(theirs):
            mismatch = n
        g.update(compared=n, identical=mismatch is None, first_mismatch_index=mismatch)
        # Log-probabilities of the tokens both sides chose alike (the rows after a mismatch see other histories).
        lp_dev, lp_host = dev.get("logprobs"), host.get("logprobs")
        if isinstance(lp_dev, list) and isinstance(lp_host, list):
            same = n if mismatch is None else mismatch
            diffs = [abs(number(a.get("logprob")) - number(b.get("logprob"))) for a, b in zip(lp_dev[:same], lp_host[:same])
                     if isinstance(a, dict) and isinstance(b, dict) and number(a.get("logprob")) is not None and number(b.get("logprob")) is not None]
            if diffs:
                g["logprob_max_abs_diff"] = max(diffs)
                g["logprob_mean_abs_diff"] = sum(diffs) / len(diffs)
                g["logprob_compared"] = len(diffs)
    decode = {"device": number(dev.get("decode_tokens_per_second")), "host": number(host.get("decode_tokens_per_second")),
              "device_name": dev.get("device"), "host_name": host.get("device"),
              "generated_tokens": {"device": dev.get("generated_tokens"), "host": host.get("generated_tokens")}}
    decode["device_over_host"] = ratio(decode["device"], decode["host"])
    bench_device = summarize_bench(extract_json_object(read_text(os.path.join(raw, "demo-bench-device.out"))))
    bench_copies = summarize_bench(extract_json_object(read_text(os.path.join(raw, "demo-bench-device-copy-uploads.out"))))
    bench_host = summarize_bench(extract_json_object(read_text(os.path.join(raw, "demo-bench-host.out"))))
    bench_schema = summarize_bench(extract_json_object(read_text(os.path.join(raw, "demo-bench-schema-device.out"))))
    sweep = summarize_sweep(extract_json_object(read_text(os.path.join(raw, "demo-sweep-device.out"))))
    op_times = summarize_op_times(extract_json_object(read_text(os.path.join(raw, "demo-ops.out"))))
    serve = extract_json_object(read_text(os.path.join(raw, "demo-serve-device.out"))) or None
    prefix_cache = extract_json_object(read_text(os.path.join(raw, "demo-prefix-cache-device.out"))) or None
    if serve:
        serve.pop("server_log_tail", None)
    demo = {"device": device, "raw": raw, "step_status": status, "conformance": conformance, "greedy": g,
            "decode_tokens_per_second": decode, "bench_device": bench_device,
            "bench_device_copy_uploads": bench_copies, "bench_host": bench_host, "bench_schema_device": bench_schema,
            "sweep_device": sweep, "serve_device": serve, "prefix_cache_device": prefix_cache, "op_times": op_times}
    if bench_device and bench_host:
        demo["bench_ar_device_over_host"] = ratio(bench_device["ar_tokens_per_second"], bench_host["ar_tokens_per_second"])
    checks = []
    if conformance["failed"]:
        checks.append(f"conformance: {conformance['failed']} checks failed on {conformance['device']}")
    if g["identical"] is False:
        checks.append(f"greedy tokens differ between {device} and host from index {g['first_mismatch_index']}")
    demo["checks_failed"] = checks
    missing = [label for label, present in (
        ("conformance count", conformance["passed"] is not None),
        ("greedy comparison", g["identical"] is not None),
        ("decode tok/s", decode["device"] is not None and decode["host"] is not None),
        ("bench AR tok/s", bool(bench_device) and bench_device["ar_tokens_per_second"] is not None),
        ("bench Medusa tok/s", bool(bench_device) and bench_device["medusa_tokens_per_second"] is not None)) if not present]
    demo["missing"] = missing
    demo["errors"] = {v: read_text(os.path.join(raw, f"{v}.err"), 2500)
                      for k, v in DEMO_STEPS.items() if status[k] in ("failed", "timeout")}
    return demo


def demo_table(demo, created, gpu, commit):
    """The demo stage as text, plus a row for docs/benchmarks.md."""
    d, c, g, r = demo["device"], demo["conformance"], demo["greedy"], demo["decode_tokens_per_second"]
    x = lambda v: f"{v:.2f}x" if v else "-"  # noqa: E731
    lines = [f"demo: stories15M f16 with its Medusa heads, {d} vs host",
             "  steps: " + ", ".join(f"{k} {v}" for k, v in demo["step_status"].items())]
    conf = "not run" if c["passed"] is None else f"{c['passed']} passed, {c['failed']} failed"
    lines.append(f"  conformance on {c['device']}: {conf}")
    for f in c["failures"]:
        lines.append(f"    FAIL {f}")
    if g["identical"] is None:
        same = "not compared"
    elif g["identical"]:
        same = f"identical ({g['compared']} tokens)"
    else:
        same = f"DIFFERENT from index {g['first_mismatch_index']} ({g['compared']} compared)"
    lines.append(f"  greedy tokens {d} vs host: {same}")
    if g.get("logprob_compared"):
        lines.append(f"  token logprobs {d} vs host: max |diff| {g['logprob_max_abs_diff']:.2e}, mean {g['logprob_mean_abs_diff']:.2e}"
                     f" over {g['logprob_compared']} tokens")
    if g["identical"] is False:
        lines.append(f"    {d}: {g['device_tokens']}")
        lines.append(f"    host: {g['host_tokens']}")
    lines.append(f"  decode tok/s (generate, --heads none): host {fmt(r['host'])}, {d} {fmt(r['device'])},"
                 f" {d}/host {x(r['device_over_host'])}")
    for label, b, step in ((d, demo["bench_device"], "bench device"), ("host", demo["bench_host"], "bench host")):
        if not b:
            reason = read_text(os.path.join(demo["raw"], DEMO_STEPS[step] + ".err"), 300).strip().splitlines()
            why = f": {reason[-1]}" if demo["step_status"][step] == "skipped" and reason else ""
            lines.append(f"  bench on {label}: no result ({demo['step_status'][step]}{why})")
            continue
        heads = str(b["heads"]).split(" (")[0]
        lines.append(f"  bench on {label} ({b['prompts']} prompts x {b['max_tokens']} tokens, heads {heads}):"
                     f" AR {fmt(b['ar_tokens_per_second'])} tok/s, {b['tree'] or 'medusa'} {fmt(b['medusa_tokens_per_second'])}"
                     f" tok/s ({x(b['medusa_over_ar'])}), mean accepted {fmt(b['mean_accepted'], 2)},"
                     f" identical to AR {b['identical_to_autoregressive']}" + waits_text(b))
    cu, b0 = demo.get("bench_device_copy_uploads"), demo["bench_device"]
    if cu:
        lines.append(f"  same bench with the old waits (ILGPU_MEDUSA_SMALL_UPLOADS=0 ILGPU_MEDUSA_DEVICE_GUESSES=0):"
                     f" AR {fmt(cu['ar_tokens_per_second'])} tok/s, {cu['tree'] or 'medusa'} {fmt(cu['medusa_tokens_per_second'])}"
                     f" tok/s ({x(cu['medusa_over_ar'])}){waits_text(cu)}; fewer waits buy AR"
                     f" {x(ratio((b0 or {}).get('ar_tokens_per_second'), cu['ar_tokens_per_second']))},"
                     f" Medusa {x(ratio((b0 or {}).get('medusa_tokens_per_second'), cu['medusa_tokens_per_second']))}")
    bs = demo.get("bench_schema_device")
    if bs:
        lines.append(f"  structured output on {d} (bench --json-schema prompts/person.schema.json): AR {fmt(bs['ar_tokens_per_second'])} tok/s"
                     f" ({fmt(bs['ms_per_step']['ar'], 3)} ms/step), {bs['tree'] or 'medusa'} {fmt(bs['medusa_tokens_per_second'])} tok/s"
                     f" ({x(bs['medusa_over_ar'])}), mean accepted {fmt(bs['mean_accepted'], 2)}, forced tokens {bs.get('forced_tokens')},"
                     f" identical to AR {bs['identical_to_autoregressive']}")
    sw = demo.get("sweep_device")
    if sw and sw["configurations"]:
        lines.append(f"  tree sweep on {d} (bench --sweep-trees): recommended {sw['recommended_tree'] or '-'}")
        for c in sw["configurations"]:
            lines.append(f"    {str(c['name']):<28} {fmt(c['tokens_per_second'])} tok/s, {x(c['speedup'])},"
                         f" {fmt(c['ms_per_step'], 3)} ms/step" + (f", accepted {fmt(c['mean_accepted'], 2)}"
                                                                   if c['mean_accepted'] is not None else ""))
    sv = demo.get("serve_device")
    if sv and sv.get("concurrent"):
        a, c = sv["alone"], sv["concurrent"]
        lines.append(f"  serve on {d} (HTTP, {c['requests']} streaming requests at once x {sv['max_tokens']} tokens):"
                     f" {fmt(c['tokens_per_second'])} tok/s together vs {fmt(a['tokens_per_second'])} alone"
                     f" ({x(sv.get('concurrent_over_alone'))}), first token {fmt(c['ttft_ms_mean'])} ms mean /"
                     f" {fmt(c['ttft_ms_max'])} max, batched reply identical to alone {sv.get('identical_first_reply')},"
                     f" exit code {sv.get('exit_code')}")
    elif sv:
        lines.append(f"  serve on {d}: {sv.get('error', 'no result')} (exit code {sv.get('exit_code')})")
    pc = demo.get("prefix_cache_device")
    if pc:
        lines.append(f"  prefix cache on {d} ({pc.get('prefix_tokens')}-token shared opening, {pc.get('cached_prompt_tokens_warm_mean')} tokens"
                     f" found warm): time to first token {fmt(number(pc.get('time_to_first_token_ms_cold_median')))} ms cold,"
                     f" {fmt(number(pc.get('time_to_first_token_ms_warm_median')))} ms warm"
                     f" ({x(number(pc.get('time_to_first_token_cold_over_warm')))}), request {x(number(pc.get('request_cold_over_warm')))},"
                     f" warm tokens = cold {pc.get('warm_tokens_identical_to_cold')}")
    lines.extend(op_times_lines(demo.get("op_times")))
    for check in demo["checks_failed"]:
        lines.append(f"  CHECK FAILED: {check}")
    b = demo["bench_device"] or {}
    gpu_name = (gpu or {}).get("name", "-")
    row = (f"| {created[:10]} | {gpu_name} | {(commit or '?')[:7]} | {conf} | {same} | {fmt(r['host'])} / {fmt(r['device'])}"
           f" ({x(r['device_over_host'])}) | {fmt(b.get('ar_tokens_per_second'))} / {fmt(b.get('medusa_tokens_per_second'))}"
           f" ({x(b.get('medusa_over_ar'))}) | {fmt(b.get('mean_accepted'), 2)} |")
    lines.append("  docs/benchmarks.md row (date | GPU | commit | conformance | greedy | decode tok/s host / device |"
                 " bench AR / Medusa tok/s | mean accepted):")
    lines.append("  " + row)
    return "\n".join(lines)


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
    rows.append([f"greedy tokens = HF fp16 ({g['compared']})", same, "", "", ""])
    if "teacher_forced" in g:
        tf = g["teacher_forced"]
        rows.append(["  teacher-forced vs HF fp16 logits", f"{tf['argmax']} argmax, {tf['near_ties']} near-tie, {tf['wrong']} wrong",
                     "", "", f"all consistent: {g['target']}"])
    f = g.get("fp32") or {}
    if f.get("identical") is None:
        same32 = "not compared" + (" (dry run)" if mode == "dry-run" else "")
    else:
        same32 = "yes" if f["identical"] else f"no, first mismatch at {f['first_mismatch_index']}"
    rows.append([f"greedy tokens = HF float32 ({f.get('compared', 0)})", same32, "", "", f"identical: {f.get('target', 'n/a')}"])
    if "teacher_forced" in f:
        tf = f["teacher_forced"]
        rows.append(["  teacher-forced vs HF float32 logits", f"{tf['argmax']} argmax, {tf['near_ties']} near-tie, {tf['wrong']} wrong",
                     "", "", ""])
    widths = [max(len(str(r[i])) for r in rows) for i in range(5)]
    lines = [head, "  steps: " + ", ".join(f"{k} {v}" for k, v in status.items())]
    for r in rows:
        lines.append("  " + "  ".join([str(r[0]).ljust(widths[0])] + [str(c).rjust(w) for c, w in zip(r[1:4], widths[1:4])]
                                      + [str(r[4])]).rstrip())
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    raw = args.raw
    shapes = [s for s in args.shapes.split(",") if s and s != "demo"]
    with_demo = "demo" in args.shapes.split(",")
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
    created = result["created_utc"]
    demo = None
    if with_demo:
        demo = summarize_demo(raw, steps, args.device)
        result["demo"] = demo
        blocks.append(demo_table(demo, created, gpu, commit))
    for shape in shapes:
        model = extract_json_object(read_text(os.path.join(raw, f"make-{shape}.out")))
        ours = extract_json_object(read_text(os.path.join(raw, f"ours-{shape}.out")))
        he = load_json(os.path.join(raw, f"hf-eager-{shape}.json"))
        hc = load_json(os.path.join(raw, f"hf-compiled-{shape}.json"))
        copy = ((he or {}).get("copy_bandwidth") or {}).get("gb_per_s") or torch_copy_any
        summary = summarize(shape, ours, he, hc, copy)
        summary["op_times"] = summarize_op_times(extract_json_object(read_text(os.path.join(raw, f"ours-{shape}-ops.out"))))
        summary["unfused"] = summarize_unfused(ours, extract_json_object(read_text(os.path.join(raw, f"ours-{shape}-unfused.out"))))
        summary["f32_cores"] = summarize_tensor(ours, extract_json_object(read_text(os.path.join(raw, f"ours-{shape}-f32cores.out"))))
        decode_variants = [("portable GEMV (ILGPU_MEDUSA_WIDE_GEMV=0)", extract_json_object(read_text(os.path.join(raw, f"ours-{shape}-narrow-gemv.out")))),
                           ("wide GEMV, two rows per warp everywhere (ILGPU_MEDUSA_GEMV_ROWS=2)", extract_json_object(read_text(os.path.join(raw, f"ours-{shape}-gemv-two-rows.out")))),
                           ("decoding attention in blocks (ILGPU_MEDUSA_DECODE_ATTENTION=blocks)", extract_json_object(read_text(os.path.join(raw, f"ours-{shape}-block-decode.out")))),
                           ("decoding attention per token (ILGPU_MEDUSA_DECODE_ATTENTION=per-token)", extract_json_object(read_text(os.path.join(raw, f"ours-{shape}-per-token-decode.out")))),
                           ("uploads as copies (ILGPU_MEDUSA_SMALL_UPLOADS=0)", extract_json_object(read_text(os.path.join(raw, f"ours-{shape}-copy-uploads.out"))))]
        tree_variants = [("tree attention in blocks (ILGPU_MEDUSA_TREE_ATTENTION=blocks)", extract_json_object(read_text(os.path.join(raw, f"ours-{shape}-block-trees.out")))),
                         ("one chunk ahead (ILGPU_MEDUSA_TENSOR_PREFETCH=1)", extract_json_object(read_text(os.path.join(raw, f"ours-{shape}-prefetch1.out")))),
                         ("fixed split target (ILGPU_MEDUSA_TENSOR_SPLITS=fixed)", extract_json_object(read_text(os.path.join(raw, f"ours-{shape}-fixed-splits.out")))),
                         ("KV cache in binary16 (--kv-dtype f16)", extract_json_object(read_text(os.path.join(raw, f"ours-{shape}-kv16.out"))))]
        summary["tree_variants"] = {label: {"decode_tokens_per_second": number(doc.get("decode_tokens_per_second")),
                                            "tree_step_ms": {k: number(v) for k, v in (doc.get("tree_step_ms") or {}).items()},
                                            "greedy_tokens_equal": (ours.get("greedy_tokens") == doc.get("greedy_tokens"))
                                            if isinstance(ours, dict) and ours.get("greedy_tokens") and doc.get("greedy_tokens") else None,
                                            "versus_hf_fp16": hf_agreement(doc, he) if "binary16" in label else None}
                                    for label, doc in tree_variants if isinstance(doc, dict)}
        summary["decode_variants"] = {label: {"decode_tokens_per_second": number((doc or {}).get("decode_tokens_per_second")),
                                              "one_node_step_ms": number(((doc or {}).get("tree_step_ms") or {}).get("1")),
                                              "host_waits_per_decode_step": number((doc or {}).get("host_waits_per_decode_step"))}
                                      for label, doc in decode_variants if isinstance(doc, dict)}
        absent = [f for f in OURS_FIELDS if ours is None or f not in ours]
        if absent:
            missing_ours.append(f"{shape}: {'no JSON' if ours is None else 'missing ' + ', '.join(absent)}")
        names = {"make": f"make-{shape}", "ours": f"ours-{shape}", "op times": f"ours-{shape}-ops",
                 "unfused": f"ours-{shape}-unfused", "f32 cores": f"ours-{shape}-f32cores", "hf eager": f"hf-eager-{shape}", "hf compiled": f"hf-compiled-{shape}"}
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
        blocks.append("\n".join([table(shape, summary, status, model, args.mode)] + unfused_lines(summary["unfused"])
                                 + tensor_lines(summary["f32_cores"]) + tree_variant_lines(ours, tree_variants, hf=he)
                                 + variant_lines(ours, decode_variants)
                                 + op_times_lines(summary["op_times"])))
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
    if demo and demo["missing"]:
        print("demo stage incomplete: missing " + ", ".join(demo["missing"]))
    print(f"results: {args.out}")
    print("=" * 100)
    if args.require_ours and (missing_ours or (demo and demo["missing"])):
        return 1
    return 3 if demo and demo["checks_failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
