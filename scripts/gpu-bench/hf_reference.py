#!/usr/bin/env python3
"""
The transformers side of the GPU benchmark: the same checkpoint and prompt as our runtime, in fp16 on the GPU.

  --mode eager (default): eager attention, DynamicCache, batch 1.
      * prefill: one forward over the whole prompt (after a warm-up forward), tokens/s.
      * greedy: a hand-written argmax loop of --greedy-tokens tokens after the prompt (no stop at EOS, as the
        tokens are compared one by one), with the top-1/top-2 logit margin of each step.
      * teacher-forced check of our tokens (with --ours-output): one forward over prompt + our greedy tokens; for
        each of our tokens, is it transformers' argmax, within --near-tie-fraction x std(logits) of the max (a
        near-tie, which fp16 rounding may flip either way), or wrong? This stays meaningful after a first flip,
        where plain token equality cascades into noise.
      * decode: --warmup-tokens steps, then --decode-tokens timed steps (torch.cuda.synchronize around them),
        each step feeding the previous argmax, which is read on the host every step (as generate() and our
        profile do); tokens/s and ms per step.
      * float32 reference (last, unless --no-fp32-reference): the same fp16 weights widened to float32 (exact) and
        run in float32 with TF32 off, so that every product and sum is float32 as in our runtime (fp16 weights,
        float32 activations and accumulators): greedy tokens again, and the teacher-forced check of ours against
        these logits. fp16 eager rounds every activation to fp16 (about 1e-3 relative), enough to flip a near-tie of
        a random-weight model; float32 computation leaves differences of summation order only.
  --mode compiled: static KV cache + torch.compile (mode reduce-overhead) through model.generate, sdpa attention;
      a streamer time-stamps every generated token and the decode rate is taken between the first and the last
      (two warm-up generations first, which compile and record the CUDA graphs). Guarded by --time-budget-s.
  --copy-bandwidth: device-to-device copy of a --copy-gib GiB tensor, reported as
      (bytes read + bytes written) / time = 2 x size / time, in GB/s (1 GB = 1e9 bytes), median of 5 x 10 copies.

Results go to --out as JSON, rewritten after every stage, so a step killed by its time limit keeps what it measured.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gpu_bench_common import (error_text, extract_json_object, log, read_prompt_ids,  # noqa: E402
                              read_text, write_json)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="transformers reference for the GPU benchmark")
    p.add_argument("--model", required=True, help="checkpoint directory (make_model.py output)")
    p.add_argument("--prompt-ids", help="prompt_ids.json (default: MODEL/prompt_ids.json)")
    p.add_argument("--mode", choices=["eager", "compiled"], default="eager")
    p.add_argument("--attn", help="attention implementation (default: eager for --mode eager, sdpa for compiled)")
    p.add_argument("--greedy-tokens", type=int, default=32)
    p.add_argument("--decode-tokens", type=int, default=128)
    p.add_argument("--warmup-tokens", type=int, default=8)
    p.add_argument("--ours-output", help="stdout of our `profile --json` run, for the teacher-forced check")
    p.add_argument("--near-tie-fraction", type=float, default=0.02,
                   help="a token whose logit is within this fraction of std(logits) of the max is a near-tie (default 0.02)")
    p.add_argument("--no-fp32-reference", dest="fp32_reference", action="store_false",
                   help="eager mode: skip the float32 greedy reference run at the end")
    p.add_argument("--copy-bandwidth", action="store_true", help="also measure device-to-device copy bandwidth")
    p.add_argument("--copy-gib", type=float, default=1.0, help="size of the copied tensor in GiB (default 1)")
    p.add_argument("--time-budget-s", type=float, default=300.0,
                   help="compiled mode: skip the measured runs when the warm-ups leave less than needed (default 300)")
    p.add_argument("--device", default="cuda")
    p.add_argument("--out", required=True, help="results JSON")
    return p.parse_args(argv)


class Run:
    """The results object, saved after every stage; each stage's failure is recorded and the next stage still runs."""

    def __init__(self, args):
        self.args = args
        self.started = time.perf_counter()
        self.data = {"mode": args.mode, "model": os.path.abspath(args.model), "status": "running",
                     "errors": {}, "stage_seconds": {}}

    def save(self):
        write_json(self.args.out, self.data)

    def stage(self, name, fn, *fn_args):
        log(f"[{self.args.mode}] {name} ...")
        self.data["current_stage"] = name
        self.save()
        t0 = time.perf_counter()
        try:
            value = fn(*fn_args)
        except Exception as e:  # noqa: BLE001 - every failure is recorded and the run goes on
            self.data["errors"][name] = error_text(e)
            log(f"[{self.args.mode}] {name} FAILED: {type(e).__name__}: {e}")
            value = None
        self.data["stage_seconds"][name] = round(time.perf_counter() - t0, 2)
        self.data.pop("current_stage", None)
        self.save()
        return value

    def elapsed(self):
        return time.perf_counter() - self.started


def synchronize(device):
    import torch
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def environment(run, device):
    import torch
    import transformers
    info = {"python": sys.version.split()[0], "torch": torch.__version__, "transformers": transformers.__version__,
            "torch_cuda": torch.version.cuda}
    if str(device).startswith("cuda"):
        if not torch.cuda.is_available():
            raise RuntimeError("torch.cuda.is_available() is False")
        props = torch.cuda.get_device_properties(0)
        info.update(gpu_name=props.name, gpu_memory_bytes=props.total_memory,
                    compute_capability=f"{props.major}.{props.minor}", multiprocessors=props.multi_processor_count)
    run.data["environment"] = info
    log(f"torch {info['torch']} (CUDA {info['torch_cuda']}), transformers {info['transformers']}, "
        f"{info.get('gpu_name', device)}")


def copy_bandwidth(run, device, gib):
    import torch
    n = int(gib * 2 ** 30)
    a = torch.empty(n, dtype=torch.uint8, device=device)
    a.fill_(7)
    b = torch.empty_like(a)
    for _ in range(3):
        b.copy_(a)
    synchronize(device)
    per_copy = []
    for _ in range(5):
        if str(device).startswith("cuda"):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(10):
                b.copy_(a)
            end.record()
            end.synchronize()
            per_copy.append(start.elapsed_time(end) / 1e3 / 10)
        else:
            t0 = time.perf_counter()
            for _ in range(10):
                b.copy_(a)
            per_copy.append((time.perf_counter() - t0) / 10)
    median, best = sorted(per_copy)[len(per_copy) // 2], min(per_copy)
    result = {"bytes": n, "seconds_per_copy_median": median, "seconds_per_copy_all": per_copy,
              "gb_per_s": round(2 * n / median / 1e9, 1), "gb_per_s_best": round(2 * n / best / 1e9, 1),
              "convention": "(bytes read + bytes written) / time = 2 x size / time; 1 GB = 1e9 bytes; "
                            "median of 5 batches of 10 copies (our profile: median of 10 copies, same convention)"}
    del a, b
    if str(device).startswith("cuda"):
        torch.cuda.empty_cache()
    run.data["copy_bandwidth"] = result
    log(f"device copy: {result['gb_per_s']} GB/s ({n / 2 ** 30:.2f} GiB tensor, read + write)")


def load_model(run, path, device, attn):
    import torch
    import transformers
    from transformers import AutoModelForCausalLM

    version = tuple(int(x) for x in transformers.__version__.split(".")[:2] if x.isdigit())
    # transformers 4.56 renamed torch_dtype to dtype; an unknown keyword would silently land in the config.
    kwargs = {"dtype" if version >= (4, 56) else "torch_dtype": torch.float16, "attn_implementation": attn}
    t0 = time.perf_counter()
    try:
        model = AutoModelForCausalLM.from_pretrained(path, device_map=device, **kwargs)
    except (ImportError, ValueError, TypeError) as e:  # device_map needs accelerate; fall back to .to(device)
        log(f"from_pretrained(device_map=...) failed ({type(e).__name__}: {e}); loading then moving")
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs).to(device)
    if next(model.parameters()).dtype != torch.float16:
        model = model.to(torch.float16)
    model.eval()
    synchronize(device)
    seconds = time.perf_counter() - t0
    run.data["load"] = {"seconds": round(seconds, 2), "attn_implementation": getattr(model.config, "_attn_implementation", attn),
                        "dtype": str(next(model.parameters()).dtype),
                        "parameters": sum(p.numel() for p in model.parameters())}
    log(f"loaded {path} in {seconds:.1f} s ({run.data['load']})")
    return model


def greedy_loop(model, out, count, device):
    """count greedy tokens after a prefill output (DynamicCache, no stop at EOS), with each step's top-2 margin / std."""
    import torch
    past, logits = out.past_key_values, out.logits[0, -1].float()
    tokens, margins = [], []
    for i in range(count):
        top = torch.topk(logits, 2)
        token = int(top.indices[0])
        tokens.append(token)
        margins.append(float(top.values[0] - top.values[1]) / max(float(logits.std()), 1e-12))
        if i + 1 == count:
            break
        out = model(input_ids=torch.tensor([[token]], device=device), past_key_values=past, use_cache=True)
        past, logits = out.past_key_values, out.logits[0, -1].float()
    return past, tokens, margins


def prefill_and_greedy(run, model, prompt, greedy_tokens, device):
    import torch
    ids = torch.tensor([prompt], device=device)
    with torch.inference_mode():
        model(input_ids=ids, use_cache=True)  # warm-up: cuBLAS handles and heuristics, kernel loading
        synchronize(device)
        t0 = time.perf_counter()
        out = model(input_ids=ids, use_cache=True)
        synchronize(device)
        prefill_s = time.perf_counter() - t0
        run.data["prefill"] = {"tokens": len(prompt), "seconds": prefill_s,
                               "tokens_per_second": round(len(prompt) / prefill_s, 1)}
        log(f"prefill {len(prompt)} tokens: {prefill_s * 1e3:.1f} ms ({len(prompt) / prefill_s:.0f} tok/s)")
        past, tokens, margins = greedy_loop(model, out, greedy_tokens, device)
    run.data["greedy"] = {"tokens": tokens, "top2_margin_over_std": [round(m, 4) for m in margins],
                          "note": "hand-written argmax loop with DynamicCache; no stop at EOS"}
    log(f"greedy {len(tokens)} tokens: {tokens[:12]}{' ...' if len(tokens) > 12 else ''}; "
        f"smallest top-2 margin {min(margins):.4f} std")
    return past, tokens


def teacher_forced_check(run, model, prompt, ours, fraction, device, key="teacher_forced"):
    import torch
    ours = [int(t) for t in ours]
    with torch.inference_mode():
        out = model(input_ids=torch.tensor([prompt + ours], device=device), use_cache=False)
        # Row j predicts the token at position len(prompt) + j, which is ours[j].
        rows = out.logits[0, len(prompt) - 1: len(prompt) - 1 + len(ours)].float()
        maxima, argmax = rows.max(dim=-1)
        chosen = rows.gather(1, torch.tensor(ours, device=rows.device)[:, None])[:, 0]
        stds = rows.std(dim=-1)
    verdicts, gaps = [], []
    for j, token in enumerate(ours):
        gap = float(maxima[j] - chosen[j]) / max(float(stds[j]), 1e-12)
        gaps.append(round(gap, 5))
        verdicts.append("argmax" if int(argmax[j]) == token else "near-tie" if gap <= fraction else "wrong")
    wrong = [j for j, v in enumerate(verdicts) if v == "wrong"]
    run.data[key] = {
        "checked_tokens": len(ours), "argmax": verdicts.count("argmax"), "near_ties": verdicts.count("near-tie"),
        "wrong": len(wrong), "first_wrong_index": wrong[0] if wrong else None, "consistent": not wrong,
        "gap_over_std": gaps, "hf_argmax": [int(x) for x in argmax.tolist()], "verdicts": verdicts,
        "near_tie_fraction_of_std": fraction,
    }
    log(f"{key.replace('_', ' ')}: {verdicts.count('argmax')} argmax, {verdicts.count('near-tie')} near-ties, {len(wrong)} wrong"
        + (f" (first at {wrong[0]})" if wrong else ""))


def fp32_reference(run, model, prompt, greedy_tokens, ours, fraction, device):
    """The float32 reference: the model widened in place (fp16 -> float32 is exact), TF32 off; greedy tokens and the
    teacher-forced check of ours. Runs last: the fp16 model is gone afterwards."""
    import torch
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    if str(device).startswith("cuda"):
        torch.cuda.empty_cache()
    model.float()
    synchronize(device)
    with torch.inference_mode():
        out = model(input_ids=torch.tensor([prompt], device=device), use_cache=True)
        _, tokens, margins = greedy_loop(model, out, greedy_tokens, device)
        del out
    run.data["greedy_fp32"] = {"tokens": tokens, "top2_margin_over_std": [round(m, 5) for m in margins],
                               "dtype": str(next(model.parameters()).dtype), "tf32": False,
                               "note": "the fp16 weights widened to float32 (exact), computed in float32; argmax loop, no stop at EOS"}
    log(f"float32 greedy {len(tokens)} tokens: {tokens[:12]}{' ...' if len(tokens) > 12 else ''}; "
        f"smallest top-2 margin {min(margins):.5f} std")
    if ours:
        teacher_forced_check(run, model, prompt, ours[:greedy_tokens], fraction, device, key="teacher_forced_fp32")


def eager_decode(run, model, past, last_token, warmup, count, device):
    import torch
    with torch.inference_mode():
        current = torch.tensor([[last_token]], device=device)
        context = past.get_seq_length() if hasattr(past, "get_seq_length") else None

        def step(current, past):
            out = model(input_ids=current, past_key_values=past, use_cache=True)
            token = out.logits[:, -1:].argmax(-1)
            token.item()  # the token reaches the host every step, as in generate() and in our profile's decode loop
            return token, out.past_key_values

        for _ in range(warmup):
            current, past = step(current, past)
        synchronize(device)
        t0 = time.perf_counter()
        for _ in range(count):
            current, past = step(current, past)
        synchronize(device)
        seconds = time.perf_counter() - t0
    run.data["decode"] = {"tokens": count, "warmup_tokens": warmup, "seconds": seconds,
                          "tokens_per_second": round(count / seconds, 2), "step_ms": round(seconds / count * 1e3, 3),
                          "context_at_start": context}
    log(f"eager decode: {count / seconds:.1f} tok/s ({seconds / count * 1e3:.2f} ms/step, context {context})")


def timing_streamer():
    """A generate() streamer that only time-stamps each put(): the prompt first, then every new token."""
    try:
        from transformers.generation.streamers import BaseStreamer
    except ImportError:
        BaseStreamer = object  # noqa: N806 - generate() only calls put() and end()

    class TimingStreamer(BaseStreamer):
        def __init__(self):
            self.times = []

        def put(self, value):  # noqa: ARG002 - the tokens are not needed
            self.times.append(time.perf_counter())

        def end(self):
            pass

    return TimingStreamer()


def compiled_decode(run, model, prompt, count, device, budget_s):
    import torch
    import transformers

    model.generation_config.cache_implementation = "static"
    compile_config = None
    try:
        # transformers >= 4.47 compiles the decoding forward itself when the cache is static.
        compile_config = transformers.CompileConfig(fullgraph=True, mode="reduce-overhead")
    except (AttributeError, TypeError) as e:
        log(f"compiled: no usable transformers.CompileConfig ({e}); compiling model.forward by hand")
    if compile_config is not None:
        model.generation_config.compile_config = compile_config
        how = "generate() auto-compile, CompileConfig(fullgraph=True, mode='reduce-overhead'), static cache"
    else:
        model.forward = torch.compile(model.forward, mode="reduce-overhead", fullgraph=True)
        how = "torch.compile(model.forward, mode='reduce-overhead', fullgraph=True), static cache"
    ids = torch.tensor([prompt], device=device)
    kwargs = dict(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=count + 1,
                  min_new_tokens=count + 1, pad_token_id=0)
    result = {"how": how, "tokens": count, "runs": []}
    run.data["compiled"] = result
    for i in range(4):  # two warm-ups (compile, CUDA graph recording), then two measured runs
        if i >= 2 and run.elapsed() + 2 * (result["runs"][-1]["wall_seconds"] if result["runs"] else 0) > budget_s:
            log("compiled: time budget reached; stopping")
            break
        streamer = timing_streamer()
        t0 = time.perf_counter()
        with torch.inference_mode():
            model.generate(streamer=streamer, **kwargs)
        synchronize(device)
        wall = time.perf_counter() - t0
        new = len(streamer.times) - 1
        decode_s = streamer.times[-1] - streamer.times[1] if new >= 2 else float("nan")
        entry = {"warmup": i < 2, "wall_seconds": round(wall, 2), "new_tokens": new,
                 "decode_tokens_per_second": round((new - 1) / decode_s, 2) if new >= 2 else None}
        result["runs"].append(entry)
        run.save()
        log(f"compiled run {i + 1}{' (warm-up)' if i < 2 else ''}: {wall:.1f} s, {entry['decode_tokens_per_second']} tok/s")
    measured = [r["decode_tokens_per_second"] for r in result["runs"] if not r["warmup"] and r["decode_tokens_per_second"]]
    result["decode_tokens_per_second"] = max(measured) if measured else None
    try:
        from torch._dynamo.utils import counters
        result["dynamo_stats"] = {k: int(v) for k, v in counters.get("stats", {}).items()}
    except Exception:  # noqa: BLE001 - diagnostics only
        pass
    if result["decode_tokens_per_second"] is None:
        raise RuntimeError("no measured compiled run finished inside the time budget")


def ours_greedy_tokens(path):
    profile = extract_json_object(read_text(path))
    if profile is None:
        raise ValueError(f"{path}: no JSON object in our profile output")
    tokens = profile.get("greedy_tokens")
    if not isinstance(tokens, list) or not tokens:
        raise ValueError(f"{path}: our profile output has no greedy_tokens")
    return tokens


def main(argv=None) -> int:
    args = parse_args(argv)
    run = Run(args)
    attn = args.attn or ("eager" if args.mode == "eager" else "sdpa")
    prompt = read_prompt_ids(args.prompt_ids or os.path.join(args.model, "prompt_ids.json"))
    run.data["prompt_tokens"] = len(prompt)
    run.stage("environment", environment, run, args.device)
    if args.copy_bandwidth:
        run.stage("copy_bandwidth", copy_bandwidth, run, args.device, args.copy_gib)
    model = run.stage("load", load_model, run, args.model, args.device, attn)
    if model is not None and args.mode == "eager":
        greedy = run.stage("prefill_greedy", prefill_and_greedy, run, model, prompt, args.greedy_tokens, args.device)
        ours = None
        if args.ours_output:
            ours = run.stage("read_ours", ours_greedy_tokens, args.ours_output)
            if ours:
                run.stage("teacher_forced", teacher_forced_check, run, model, prompt, ours[:args.greedy_tokens],
                          args.near_tie_fraction, args.device)
        if greedy:
            past, tokens = greedy
            greedy = None
            run.stage("decode", eager_decode, run, model, past, tokens[-1], args.warmup_tokens, args.decode_tokens,
                      args.device)
            del past
        if args.fp32_reference:
            run.stage("fp32_reference", fp32_reference, run, model, prompt, args.greedy_tokens, ours,
                      args.near_tie_fraction, args.device)
    elif model is not None:
        run.stage("compiled_decode", compiled_decode, run, model, prompt, args.decode_tokens, args.device,
                  args.time_budget_s)
    run.data["status"] = "ok" if not run.data["errors"] else "partial"
    run.data["seconds"] = round(run.elapsed(), 1)
    run.save()
    log(f"[{args.mode}] done in {run.elapsed():.1f} s, status {run.data['status']}")
    return 0 if not run.data["errors"] else 1


if __name__ == "__main__":
    sys.exit(main())
