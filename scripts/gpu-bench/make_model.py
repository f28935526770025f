#!/usr/bin/env python3
"""
Builds a random-weight Llama checkpoint in fp16 for the GPU benchmark, as transformers' save_pretrained writes it
(config.json, generation_config.json, model*.safetensors), and puts beside it the tokenizer the kit carries and a
seeded prompt (prompt_ids.json, a JSON array of token ids).

  python3 scripts/gpu-bench/make_model.py --shape 7b --out /tmp/models/7b
  python3 scripts/gpu-bench/make_model.py --prompt-only --out DIR --prompt-tokens 64   # no torch needed

Shapes: 7b = Llama-2-7B (hidden 4096, FFN 11008, 32 layers, 32 heads, 32 KV heads); 1b = TinyLlama-1.1B (hidden 2048,
FFN 5632, 22 layers, 32 heads, 4 KV heads); tiny = a few-MB model for trying this script on a CPU.

The weights are initialised on the GPU (the model is built on the meta device, allocated there with to_empty, then
every parameter is filled by a seeded generator on that device), which takes seconds where a CPU init of 6.7 B
parameters takes minutes. Only parameters are saved; the non-persistent buffers left unset by to_empty (RoPE's
inv_freq) are never saved and are rebuilt by whoever loads the checkpoint.

Why there is no "peakier logits" trick here: greedy argmax is invariant to scaling the lm_head (or the final norm),
and the fp16 rounding differences that flip near-ties scale with the logits too; with 32000 random candidates the
expected gap between the top two logits is about sigma / sqrt(2 ln 32000) = 0.22 sigma whatever the scale. A larger
initializer_range changes the activations everywhere but gives no margin either. So the weights keep transformers'
default scheme (normal(0, 0.02), norms 1), and the comparison is made robust where it can be: hf_reference.py also
checks our greedy tokens teacher-forced (is each of our tokens transformers' argmax, or within a small fraction of
the logit spread of it?), which tells a near-tie flip from a wrong implementation; report.py shows both.
"""
from __future__ import annotations

import argparse
import inspect
import json
import os
import shutil
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gpu_bench_common import log, make_prompt_ids, write_json  # noqa: E402

# Llama-2-7B and TinyLlama-1.1B; rope_theta 10000 for all (LlamaConfig's default, checked after the config is made).
SHAPES = {
    "7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=32, vocab_size=32000, max_position_embeddings=4096, rms_norm_eps=1e-5),
    "1b": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
               num_key_value_heads=4, vocab_size=32000, max_position_embeddings=2048, rms_norm_eps=1e-5),
    "tiny": dict(hidden_size=64, intermediate_size=172, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=32000, max_position_embeddings=512, rms_norm_eps=1e-5),
}
ROPE_THETA = 10000.0
TOKENIZER_FILES = ("tokenizer.model", "tokenizer.bin")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", choices=sorted(SHAPES), help="model shape (not needed with --prompt-only)")
    p.add_argument("--out", required=True, help="output directory (created; existing weights there are replaced)")
    p.add_argument("--prompt-tokens", type=int, default=512, help="length of prompt_ids.json (default 512)")
    p.add_argument("--vocab-size", type=int, default=32000, help="vocabulary for --prompt-only (default 32000)")
    p.add_argument("--seed", type=int, default=1234, help="seed of the weights and of the prompt (default 1234)")
    p.add_argument("--init-std", type=float, default=0.02,
                   help="std of the normal init of every matrix (default 0.02, transformers' initializer_range)")
    p.add_argument("--device", default="cuda", help="where to initialise the weights (default cuda; cpu works for tiny)")
    p.add_argument("--max-shard-size", default="5GB",
                   help="save_pretrained's shard size (default 5GB: the 7B model is saved as shards + index, like real checkpoints)")
    p.add_argument("--tokenizer-dir", default=".gpu-kit",
                   help="folder holding tokenizer.model (or tokenizer.bin) to copy next to the weights (default .gpu-kit)")
    p.add_argument("--prompt-only", action="store_true", help="only write prompt_ids.json (no torch needed)")
    return p.parse_args(argv)


def write_prompt(out_dir: str, count: int, vocab_size: int, seed: int) -> str:
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "prompt_ids.json")
    write_json(path, make_prompt_ids(count, vocab_size, seed), indent=None)
    log(f"wrote {path} ({count} ids in [3, {vocab_size}), seed {seed})")
    return path


def copy_tokenizer(tokenizer_dir: str, out_dir: str) -> str | None:
    for name in TOKENIZER_FILES:
        source = os.path.join(tokenizer_dir, name)
        if os.path.isfile(source):
            shutil.copyfile(source, os.path.join(out_dir, name))
            log(f"copied {source} -> {out_dir}/{name}")
            return name
    log(f"WARNING: no {' or '.join(TOKENIZER_FILES)} in {tokenizer_dir}: our runtime may refuse the model without one")
    return None


def make_config(shape: str, init_std: float):
    from transformers import LlamaConfig

    config = LlamaConfig(**SHAPES[shape], hidden_act="silu", attention_bias=False, mlp_bias=False,
                         tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
                         initializer_range=init_std)
    # rope_theta is left at LlamaConfig's default (10000): transformers 4 keeps it at the top level, 5 inside
    # rope_parameters, and passing it by name means different things to the two. Check what it came out as.
    theta = getattr(config, "rope_theta", None)
    rope = getattr(config, "rope_parameters", None)
    if theta is None and isinstance(rope, dict):
        theta = rope.get("rope_theta")
    if theta is None:
        log(f"WARNING: could not read rope_theta back from the config; assuming the default {ROPE_THETA}")
    elif float(theta) != ROPE_THETA:
        raise ValueError(f"rope_theta came out as {theta}, expected {ROPE_THETA}")
    return config


def init_parameters(model, seed: int, std: float, device: str) -> dict:
    """
    Fills every parameter deterministically: RMSNorm weights 1, biases 0 (there are none in Llama), every matrix
    (embedding, projections, lm_head) normal(0, std) drawn in fp32 from one generator seeded with `seed`, in
    parameter order, then rounded to the parameter's dtype.
    """
    import torch

    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    counts = {"normal": 0, "ones": 0, "zeros": 0}
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() == 1 and name.endswith("norm.weight"):
                param.fill_(1.0)
                counts["ones"] += 1
            elif param.dim() == 1:
                param.zero_()
                counts["zeros"] += 1
            else:
                # Drawn in fp32 and rounded (fp16 normal_ is missing on some CPU builds of torch).
                param.copy_(torch.empty(param.shape, dtype=torch.float32, device=param.device).normal_(0.0, std, generator=generator))
                counts["normal"] += 1
    return counts


def save(model, out_dir: str, max_shard_size: str) -> str:
    """save_pretrained with safetensors; keyword arguments this transformers does not know are left out."""
    params = inspect.signature(model.save_pretrained).parameters
    kwargs = {}
    if "safe_serialization" in params:
        kwargs["safe_serialization"] = True
    if "max_shard_size" in params:
        kwargs["max_shard_size"] = max_shard_size
    model.save_pretrained(out_dir, **kwargs)
    return f"save_pretrained({', '.join(f'{k}={v!r}' for k, v in kwargs.items())})"


def build(args) -> dict:
    import torch
    import transformers
    from transformers import LlamaForCausalLM

    t0 = time.perf_counter()
    config = make_config(args.shape, args.init_std)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("torch sees no CUDA device (use --device cpu for the tiny shape)")
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    model = model.to(dtype=torch.float16).to_empty(device=args.device)
    counts = init_parameters(model, args.seed, args.init_std, args.device)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    n_params = sum(p.numel() for p in model.parameters())
    t_init = time.perf_counter() - t0
    log(f"initialised {n_params / 1e9:.3f} B parameters on {args.device} in {t_init:.1f} s ({counts})")

    # Replace old weights (a previous run's shards would otherwise sit beside the new index).
    os.makedirs(args.out, exist_ok=True)
    for name in os.listdir(args.out):
        if name.endswith(".safetensors") or name.endswith(".safetensors.index.json") or name == "config.json":
            os.remove(os.path.join(args.out, name))
    t1 = time.perf_counter()
    how = save(model, args.out, args.max_shard_size)
    t_save = time.perf_counter() - t1
    files = sorted(os.listdir(args.out))
    weight_bytes = sum(os.path.getsize(os.path.join(args.out, f)) for f in files if f.endswith(".safetensors"))
    log(f"{how} wrote {weight_bytes / 1e9:.2f} GB in {t_save:.1f} s: {', '.join(files)}")
    if weight_bytes == 0:
        raise RuntimeError(f"save_pretrained wrote no .safetensors file in {args.out}")
    return {
        "shape": args.shape,
        "config": SHAPES[args.shape],
        "rope_theta": ROPE_THETA,
        "dtype": "float16",
        "seed": args.seed,
        "init": f"matrices normal(0, {args.init_std}), norms 1, generator seeded {args.seed} on {args.device}",
        "parameters": n_params,
        "safetensors_bytes": weight_bytes,
        "files": files,
        "init_seconds": round(t_init, 2),
        "save_seconds": round(t_save, 2),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.prompt_only:
        write_prompt(args.out, args.prompt_tokens, args.vocab_size, args.seed)
        return 0
    if not args.shape:
        print("error: --shape is required unless --prompt-only is given", file=sys.stderr)
        return 2
    info = build(args)
    info["tokenizer"] = copy_tokenizer(args.tokenizer_dir, args.out)
    info["prompt_ids"] = write_prompt(args.out, args.prompt_tokens, SHAPES[args.shape]["vocab_size"], args.seed)
    info["prompt_tokens"] = args.prompt_tokens
    write_json(os.path.join(args.out, "bench_model.json"), info)
    print(json.dumps(info))
    return 0


if __name__ == "__main__":
    sys.exit(main())
