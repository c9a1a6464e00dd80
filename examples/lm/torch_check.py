#!/usr/bin/env python3
"""An independent check of lm_finetune's task 1 in PyTorch, on `loftq model`
outputs: the base (model.safetensors) and the PEFT adapter
(adapter_model.safetensors, adapter_config.json) are loaded as files, the
llama2.c forward pass and LoRA (scaling lora_alpha / r, as PEFT applies it)
are written here from their published semantics, and autograd replaces the
hand-written backward pass. Nothing is shared with the C++ harness but the
checkpoint.

usage: torch_check.py FP_DIR OUT_DIR [OUT_DIR ...] [--qlora OUT_DIR] [--steps K] [--seed N]

  FP_DIR     a safetensors checkpoint of the full-precision model (HF llama
             names, as `modeltool stories` writes stories260K)
  OUT_DIR    a `loftq model` output: fine-tuned from its Q and adapter
  --qlora D  a `loftq model --start zero --scale absmax --iters 1 --last`
             output: its Q is q(W); fine-tuned QLoRA-style (lora_B = 0,
             lora_A kaiming-uniform as PEFT initializes it)

Prints, per run, the held-out KL(p_fp || p_model) in nats per token at init
and after K Adam steps (lr 3e-4, batch 16) on sequences sampled from the
full-precision model (64 train / 32 held-out, 40 tokens), and each relative
to the QLoRA run. Needs torch (Debian: python3-torch); not run by the tests.
"""
import argparse
import json
import math
import os
import struct
import sys

import numpy as np
import torch

KINDS = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
         "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]
DTYPES = {"F32": np.float32, "F16": np.float16, "F64": np.float64}


def read_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, t in header.items():
        if name == "__metadata__" or t["dtype"] not in DTYPES and t["dtype"] != "BF16":
            continue
        b, e = t["data_offsets"]
        if t["dtype"] == "BF16":
            raw = np.frombuffer(data[b:e], dtype=np.uint16).astype(np.uint32) << 16
            arr = raw.view(np.float32)
        else:
            arr = np.frombuffer(data[b:e], dtype=DTYPES[t["dtype"]]).astype(np.float32)
        out[name] = torch.from_numpy(arr.reshape(t["shape"]).copy())
    return out


class Model:
    """llama2.c's run.c: RMSNorm eps 1e-5, interleaved rotary pairs, GQA,
    SwiGLU, classifier shared with the embedding."""

    def __init__(self, w, n_heads=8, n_kv_heads=4):
        self.w = w
        self.dim = w["model.embed_tokens.weight"].shape[1]
        self.n_layers = 1 + max(int(k.split(".")[2]) for k in w if k.startswith("model.layers."))
        self.n_heads, self.n_kv = n_heads, n_kv_heads
        self.hs = self.dim // n_heads
        self.lora = {}  # (layer, kind) -> (A r x in, B out x r, scaling)

    def linear(self, x, l, kind):
        y = x @ self.w[f"model.layers.{l}.{kind}.weight"].T
        if (l, kind) in self.lora:
            A, B, s = self.lora[(l, kind)]
            y = y + s * ((x @ A.T) @ B.T)
        return y

    @staticmethod
    def rmsnorm(x, g):
        return x * torch.rsqrt((x * x).mean(-1, keepdim=True) + 1e-5) * g

    def logits(self, tokens):  # tokens: (batch, T) long
        Bt, T = tokens.shape
        x = self.w["model.embed_tokens.weight"][tokens]
        pos = torch.arange(T, dtype=torch.float32)
        i = torch.arange(0, self.hs, 2, dtype=torch.float32)
        ang = pos[:, None] * (10000.0 ** (-i / self.hs))[None, :]
        cos, sin = torch.cos(ang), torch.sin(ang)

        def rope(v, heads):
            v = v.view(Bt, T, heads, self.hs // 2, 2)
            a, b = v[..., 0], v[..., 1]
            c, s = cos[None, :, None, :], sin[None, :, None, :]
            return torch.stack([a * c - b * s, a * s + b * c], -1).view(Bt, T, heads, self.hs)

        mask = torch.full((T, T), float("-inf")).triu(1)
        for l in range(self.n_layers):
            h = self.rmsnorm(x, self.w[f"model.layers.{l}.input_layernorm.weight"])
            q = rope(self.linear(h, l, KINDS[0]), self.n_heads)
            k = rope(self.linear(h, l, KINDS[1]), self.n_kv)
            v = self.linear(h, l, KINDS[2]).view(Bt, T, self.n_kv, self.hs)
            rep = self.n_heads // self.n_kv
            k = k.repeat_interleave(rep, dim=2)
            v = v.repeat_interleave(rep, dim=2)
            att = torch.einsum("bthd,bshd->bhts", q, k) / math.sqrt(self.hs) + mask
            o = torch.einsum("bhts,bshd->bthd", att.softmax(-1), v).reshape(Bt, T, self.dim)
            x = x + self.linear(o, l, KINDS[3])
            h = self.rmsnorm(x, self.w[f"model.layers.{l}.post_attention_layernorm.weight"])
            g = self.linear(h, l, KINDS[4])
            x = x + self.linear(torch.nn.functional.silu(g) * self.linear(h, l, KINDS[5]), l, KINDS[6])
        x = self.rmsnorm(x, self.w["model.norm.weight"])
        return x @ self.w["model.embed_tokens.weight"].T


def sample(model, n, T, gen):
    seqs = torch.ones(n, 1, dtype=torch.long)
    with torch.no_grad():
        for _ in range(T - 1):
            p = model.logits(seqs)[:, -1].softmax(-1)
            seqs = torch.cat([seqs, torch.multinomial(p, 1, generator=gen)], 1)
    return seqs


def kl(model, seqs, target_logp):
    logp = model.logits(seqs).log_softmax(-1)
    return (target_logp.exp() * (target_logp - logp)).sum(-1).mean()


def load_run(fp_w, out_dir, qlora, gen):
    base = dict(fp_w)
    base.update({k: v for k, v in read_safetensors(os.path.join(out_dir, "model.safetensors")).items()
                 if k.endswith("_proj.weight")})
    ad = read_safetensors(os.path.join(out_dir, "adapter_model.safetensors"))
    cfg = json.load(open(os.path.join(out_dir, "adapter_config.json")))
    m = Model(base)
    r, alpha = cfg["r"], cfg["lora_alpha"]
    for l in range(m.n_layers):
        for kind in KINDS:
            pre = f"base_model.model.model.layers.{l}.{kind}"
            A, B = ad[pre + ".lora_A.weight"].clone(), ad[pre + ".lora_B.weight"].clone()
            if qlora:  # PEFT's default init: kaiming_uniform(a=sqrt(5)) on lora_A, zeros on lora_B
                bound = 1.0 / math.sqrt(A.shape[1])
                A = (torch.rand(A.shape, generator=gen) * 2 - 1) * bound
                B = torch.zeros_like(B)
            m.lora[(l, kind)] = (A.requires_grad_(), B.requires_grad_(), alpha / r)
    return m


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("fp")
    ap.add_argument("outs", nargs="*")
    ap.add_argument("--qlora", required=True)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    torch.manual_seed(a.seed)
    fp_w = {k: v for k, v in read_safetensors(os.path.join(a.fp, "model.safetensors")).items()}
    fp = Model(fp_w)
    gen = torch.Generator().manual_seed(a.seed)
    train, test = sample(fp, 64, 40, gen), sample(fp, 32, 40, gen)
    with torch.no_grad():
        t_train, t_test = fp.logits(train).log_softmax(-1), fp.logits(test).log_softmax(-1)
    results = []
    for d, qlora in [(a.qlora, True)] + [(d, False) for d in a.outs]:
        m = load_run(fp_w, d, qlora, torch.Generator().manual_seed(a.seed + 1))
        params = [p for A, B, _ in m.lora.values() for p in (A, B)]
        opt = torch.optim.Adam(params, lr=3e-4)
        order = torch.Generator().manual_seed(a.seed + 2)
        with torch.no_grad():
            init = kl(m, test, t_test).item()
        for _ in range(a.steps):
            idx = torch.randperm(64, generator=order)[:16]
            opt.zero_grad()
            kl(m, train[idx], t_train[idx]).backward()
            opt.step()
        with torch.no_grad():
            final = kl(m, test, t_test).item()
        results.append((("qlora " if qlora else "") + d, init, final))
        print(f"{results[-1][0]}: KL {init:.4f} -> {final:.4f}", file=sys.stderr)
    q = results[0]
    print(f"{'run':40s} {'init':>8s} {'final':>8s} {'init/QL':>8s} {'final/QL':>8s}")
    for name, init, final in results:
        print(f"{name:40s} {init:8.4f} {final:8.4f} {init / q[1]:8.3f} {final / q[2]:8.3f}")


if __name__ == "__main__":
    main()
