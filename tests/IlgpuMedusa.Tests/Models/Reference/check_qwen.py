# Checks the llama.cpp logits of tiny-qwen2/ and tiny-qwen3/ (written by tests/tools/llama-cpp-reference/make.mjs)
# against transformers on the same files: a third implementation for the Qwen blocks. Needs torch and transformers
# (the GPU machine has them; CPU is enough): python3 tests/IlgpuMedusa.Tests/Models/Reference/check_qwen.py
import json, os, sys

import torch
from transformers import AutoModelForCausalLM

W = os.path.dirname(os.path.abspath(__file__))
worst = 0.0
for name in ["tiny-qwen2", "tiny-qwen3"]:
    reference = json.load(open(f"{W}/{name}-logits.json"))
    model = AutoModelForCausalLM.from_pretrained(f"{W}/{name}", dtype=torch.float32).eval()
    with torch.no_grad():
        logits = model(torch.tensor([reference["tokens"]])).logits[0]
    diff = (logits - torch.tensor(reference["logits"])).abs().max().item()
    worst = max(worst, diff)
    print(f"{name}: {type(model).__name__}, max |transformers - llama.cpp| = {diff:.3g}")
sys.exit(0 if worst <= 1e-4 else 1)
