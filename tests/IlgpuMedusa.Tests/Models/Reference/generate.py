# Generates the files in this folder with the reference libraries (torch 2.11, transformers 5.17, safetensors 0.8):
#   OUT=/some/dir python3 generate.py   writes $OUT/ref.tar holding this folder's files under ref/.
import json, os, torch, tarfile
from safetensors.torch import save_file
from transformers import LlamaForCausalLM, LlamaConfig
torch.set_grad_enabled(False)
OUT = os.environ["OUT"]; W = "/tmp/ref"; os.makedirs(W, exist_ok=True)
f32 = torch.tensor([1.0, -2.5, 3.0e-5, 65504.0], dtype=torch.float32)
t = {"a.f32": f32, "b.f16": f32.to(torch.float16).reshape(2, 2), "c.bf16": f32.to(torch.bfloat16).reshape(1, 4),
     "d.empty": torch.zeros((0, 3), dtype=torch.float32)}
save_file(t, f"{W}/reference.safetensors", metadata={"format": "pt", "note": "written by safetensors"})
bits = {k: v.contiguous().view(torch.int32 if v.dtype == torch.float32 else torch.int16).flatten().tolist() for k, v in t.items()}
json.dump(bits, open(f"{W}/reference-bits.json", "w"))
torch.manual_seed(0)
cfg = LlamaConfig(hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                  vocab_size=256, max_position_embeddings=128, rms_norm_eps=1e-6, tie_word_embeddings=False,
                  bos_token_id=1, eos_token_id=2, initializer_range=0.15)
model = LlamaForCausalLM(cfg).eval()
for n, p in model.named_parameters():
    if "norm" in n: p.copy_(1 + 0.2 * torch.randn_like(p))
model.save_pretrained(f"{W}/tiny", max_shard_size="100KB")
tokens = [1, 17, 42, 99, 200, 3, 250, 7, 7, 128]
json.dump({"tokens": tokens, "logits": model(torch.tensor([tokens])).logits[0].tolist()}, open(f"{W}/tiny-logits.json", "w"))
# bf16 copy, single file; its logits computed in f32 from the bf16-rounded weights. The model is loaded back rather
# than cast with .float(): casting to bf16 also rounds the RoPE inv_freq buffer, and .float() would keep that rounding.
model.to(torch.bfloat16).save_pretrained(f"{W}/tiny-bf16")
mb = LlamaForCausalLM.from_pretrained(f"{W}/tiny-bf16", dtype=torch.float32).eval()
print("inv_freq dtype after reload:", mb.model.rotary_emb.inv_freq.dtype)
json.dump({"tokens": tokens, "logits": mb(torch.tensor([tokens])).logits[0].tolist()}, open(f"{W}/tiny-bf16-logits.json", "w"))
print(sorted(os.listdir(f"{W}/tiny")), sorted(os.listdir(f"{W}/tiny-bf16")))
print(open(f"{W}/tiny/config.json").read())
with tarfile.open(f"{OUT}/ref.tar", "w") as tar: tar.add(W, arcname="ref")
