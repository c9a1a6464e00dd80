"""tools/python/loftq_statistics.py against `loftq calibrate` on stories260K.

    python3 test_loftq_statistics.py LOFTQ_BINARY WORKDIR DATA_DIR

The test converts llama2.c's stories260K.bin into a Hugging Face checkpoint
(q/k rows permuted as transformers' convert_llama_weights_to_hf.py does) and
builds the model as a small torch module with transformers' module paths and
its rotary embedding (rotate_half on the permuted rows). The module's logits
must match the reference forward pass in DATA_DIR. The hooks' statistics of a
set of sequences (one batch with right padding and an attention mask) must
equal those of `loftq calibrate` on the same tokens, and `loftq model
--calibration` must take the file. Exit 77 (a skip) without torch or the data.
"""

import json
import os
import shutil
import struct
import subprocess
import sys

try:
    import numpy as np
    import torch
except ImportError as e:
    print("skipping: %s (the Debian packages python3-torch and python3-numpy provide them)" % e)
    sys.exit(77)

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tools", "python"))
import loftq_statistics  # noqa: E402

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def fail(message):
    print("FAIL: " + message)
    sys.exit(1)


# --- llama2.c checkpoint -> Hugging Face tensors -------------------------------------------------

def read_llama2c(path):
    """llama2.c's version-0 checkpoint: 7 int32, then float32 arrays (common/llama2c.hpp)."""
    raw = open(path, "rb").read()
    dim, hidden, layers, heads, kv_heads, vocab, seq_len = struct.unpack("<7i", raw[:28])
    cfg = dict(dim=dim, hidden=hidden, layers=layers, heads=heads, kv_heads=kv_heads, vocab=abs(vocab),
               seq_len=seq_len, tied=vocab > 0)
    data = np.frombuffer(raw, dtype="<f4", offset=28)
    kv = dim * kv_heads // heads
    at = [0]

    def take(*shape):
        n = int(np.prod(shape))
        a = data[at[0]:at[0] + n].reshape(shape)
        at[0] += n
        return a.astype(np.float32)

    w = {}
    w["embed"] = take(cfg["vocab"], dim)
    for key, shape in (("rms_att", (dim,)), ("wq", (dim, dim)), ("wk", (kv, dim)), ("wv", (kv, dim)),
                       ("wo", (dim, dim)), ("rms_ffn", (dim,)), ("w1", (hidden, dim)), ("w2", (dim, hidden)),
                       ("w3", (hidden, dim))):
        w[key] = take(layers, *shape)
    w["rms_final"] = take(dim)
    head = dim // heads
    take(seq_len, head // 2)  # freq_cis_real
    take(seq_len, head // 2)  # freq_cis_imag
    if not cfg["tied"]:
        w["classifier"] = take(cfg["vocab"], dim)
    if at[0] != data.size:
        fail("%s: %d float32 values, the header implies %d" % (path, data.size, at[0]))
    return cfg, w


def hf_permute(w, heads):
    """convert_llama_weights_to_hf.py's permute: interleaved rotary pairs -> halves, per head."""
    out, inp = w.shape
    return w.reshape(heads, out // heads // 2, 2, inp).transpose(0, 2, 1, 3).reshape(out, inp)


def hf_tensors(cfg, w):
    t = {"model.embed_tokens.weight": w["embed"], "model.norm.weight": w["rms_final"]}
    for l in range(cfg["layers"]):
        p = "model.layers.%d." % l
        t[p + "input_layernorm.weight"] = w["rms_att"][l]
        t[p + "post_attention_layernorm.weight"] = w["rms_ffn"][l]
        t[p + "self_attn.q_proj.weight"] = hf_permute(w["wq"][l], cfg["heads"])
        t[p + "self_attn.k_proj.weight"] = hf_permute(w["wk"][l], cfg["kv_heads"])
        t[p + "self_attn.v_proj.weight"] = w["wv"][l]
        t[p + "self_attn.o_proj.weight"] = w["wo"][l]
        t[p + "mlp.gate_proj.weight"] = w["w1"][l]
        t[p + "mlp.down_proj.weight"] = w["w2"][l]
        t[p + "mlp.up_proj.weight"] = w["w3"][l]
    if not cfg["tied"]:
        t["lm_head.weight"] = w["classifier"]
    return t


def write_hf_checkpoint(directory, cfg, tensors):
    os.makedirs(directory)
    header, blobs, offset = {"__metadata__": {"format": "pt"}}, [], 0
    for name in sorted(tensors):
        b = np.ascontiguousarray(tensors[name], dtype="<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(tensors[name].shape), "data_offsets": [offset, offset + len(b)]}
        blobs.append(b)
        offset += len(b)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(os.path.join(directory, "model.safetensors"), "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
              "hidden_size": cfg["dim"], "intermediate_size": cfg["hidden"], "num_hidden_layers": cfg["layers"],
              "num_attention_heads": cfg["heads"], "num_key_value_heads": cfg["kv_heads"],
              "vocab_size": cfg["vocab"], "max_position_embeddings": cfg["seq_len"], "rms_norm_eps": 1e-5,
              "rope_theta": 10000.0, "tie_word_embeddings": cfg["tied"]}
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(config, f, indent=2)


# --- The model, as transformers' LlamaForCausalLM lays it out -------------------------------------

class RMSNorm(torch.nn.Module):
    def __init__(self, weight, eps):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.from_numpy(weight.copy()))
        self.eps = eps

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def linear(w):
    m = torch.nn.Linear(w.shape[1], w.shape[0], bias=False)
    m.weight.data = torch.from_numpy(np.ascontiguousarray(w))
    return m


def rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class Attention(torch.nn.Module):
    def __init__(self, cfg, t, p):
        super().__init__()
        self.heads, self.kv_heads, self.head = cfg["heads"], cfg["kv_heads"], cfg["dim"] // cfg["heads"]
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            setattr(self, name, linear(t[p + "self_attn." + name + ".weight"]))

    def forward(self, x, cos, sin, mask):
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.heads, self.head).transpose(1, 2)
        k = self.k_proj(x).view(B, T, self.kv_heads, self.head).transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.kv_heads, self.head).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        rep = self.heads // self.kv_heads
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        scores = q @ k.transpose(-1, -2) / self.head ** 0.5 + mask
        out = torch.softmax(scores, dim=-1) @ v
        return self.o_proj(out.transpose(1, 2).reshape(B, T, -1))


class MLP(torch.nn.Module):
    def __init__(self, t, p):
        super().__init__()
        for name in ("gate_proj", "up_proj", "down_proj"):
            setattr(self, name, linear(t[p + "mlp." + name + ".weight"]))

    def forward(self, x):
        return self.down_proj(torch.nn.functional.silu(self.gate_proj(x)) * self.up_proj(x))


class Layer(torch.nn.Module):
    def __init__(self, cfg, t, l):
        super().__init__()
        p = "model.layers.%d." % l
        self.input_layernorm = RMSNorm(t[p + "input_layernorm.weight"], 1e-5)
        self.self_attn = Attention(cfg, t, p)
        self.post_attention_layernorm = RMSNorm(t[p + "post_attention_layernorm.weight"], 1e-5)
        self.mlp = MLP(t, p)

    def forward(self, x, cos, sin, mask):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask)
        return x + self.mlp(self.post_attention_layernorm(x))


class Decoder(torch.nn.Module):
    def __init__(self, cfg, t):
        super().__init__()
        self.embed_tokens = torch.nn.Embedding.from_pretrained(torch.from_numpy(t["model.embed_tokens.weight"]))
        self.layers = torch.nn.ModuleList(Layer(cfg, t, l) for l in range(cfg["layers"]))
        self.norm = RMSNorm(t["model.norm.weight"], 1e-5)


class CausalLM(torch.nn.Module):
    def __init__(self, cfg, t):
        super().__init__()
        self.cfg = cfg
        self.model = Decoder(cfg, t)
        self.lm_head = linear(t.get("lm_head.weight", t["model.embed_tokens.weight"]))

    def forward(self, input_ids, attention_mask=None):
        B, T = input_ids.shape
        head = self.cfg["dim"] // self.cfg["heads"]
        inv_freq = 1.0 / (10000.0 ** (torch.arange(0, head, 2, dtype=torch.float32) / head))
        freqs = torch.outer(torch.arange(T, dtype=torch.float32), inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos(), emb.sin()
        mask = torch.full((T, T), float("-inf")).triu(1).expand(B, 1, T, T)
        if attention_mask is not None:
            keys = torch.zeros(B, 1, 1, T).masked_fill(attention_mask[:, None, None, :] == 0, float("-inf"))
            mask = mask + keys
            mask = mask.masked_fill(torch.isinf(mask).all(-1, keepdim=True), 0.0)  # fully padded query rows
        x = self.model.embed_tokens(input_ids)
        for layer in self.model.layers:
            x = layer(x, cos, sin, mask)
        return self.lm_head(self.model.norm(x))


# --- Reading statistics files independently of the module under test -----------------------------

def read_statistics(path):
    raw = open(path, "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    meta = header.pop("__metadata__", {})
    if meta.get("loftq.format") != "loftq.calibration.v1":
        fail("%s: loftq.format is %r" % (path, meta.get("loftq.format")))
    base, sums, tokens = 8 + n, {}, {}
    for name, info in header.items():
        b, e = info["data_offsets"]
        dt = {"F64": "<f8", "F32": "<f4", "I64": "<i8"}[info["dtype"]]
        a = np.frombuffer(raw[base + b:base + e], dtype=dt).reshape(info["shape"])
        module, kind = name.rsplit(".", 1)
        if kind == "xtx":
            sums[module] = a.astype(np.float64)
        elif kind == "tokens":
            tokens[module] = int(a.reshape(-1)[0])
        else:
            fail("%s: unexpected tensor %s" % (path, name))
    shares = {k[len("loftq.shares."):]: v for k, v in meta.items() if k.startswith("loftq.shares.")}
    for target, module in shares.items():
        sums[target], tokens[target] = sums[module], tokens[module]
    return sums, tokens, shares


def run(*args):
    r = subprocess.run(list(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)
    if r.returncode != 0:
        fail("%s exited %d: %s" % (" ".join(args), r.returncode, r.stderr.strip()))
    return r.stdout


def save_npy(path, a):
    np.save(path, np.ascontiguousarray(a, dtype=np.int32))


def main():
    if len(sys.argv) != 4:
        print(__doc__)
        return 2
    loftq, work, data = sys.argv[1:]
    bin_path = os.path.join(data, "stories260K.bin")
    if not os.path.exists(bin_path):
        print("skipping: %s is absent" % bin_path)
        return 77
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    torch.manual_seed(0)
    torch.set_num_threads(1)

    cfg, w = read_llama2c(bin_path)
    tensors = hf_tensors(cfg, w)
    ck = os.path.join(work, "ck")
    write_hf_checkpoint(ck, cfg, tensors)
    model = CausalLM(cfg, tensors).eval()

    # The module is the model: its logits match the reference forward pass.
    ref_tokens = np.load(os.path.join(data, "stories260K_logits_tokens.npy")).astype(np.int64)
    ref_logits = np.load(os.path.join(data, "stories260K_logits.npy"))
    with torch.no_grad():
        logits = model(torch.from_numpy(ref_tokens)[None])[0].numpy()
    err = float(np.abs(logits - ref_logits).max())
    if not err <= 1e-4:
        fail("logits differ from the reference by %g" % err)

    # Tokens: A (3 x 32) and B (2 x 20), drawn from the vocabulary.
    rng = np.random.default_rng(7)
    A = rng.integers(0, cfg["vocab"], size=(3, 32))
    B = rng.integers(0, cfg["vocab"], size=(2, 20))
    A[:, 0] = B[:, 0] = 1
    save_npy(os.path.join(work, "a.npy"), A)
    save_npy(os.path.join(work, "b.npy"), B)

    # The hooks: A[0:2] as a plain tensor; A[2] beside B[0] padded on the right
    # with a mask; B[1] alone, padded. The padding's rows must not count.
    def padded(rows):
        ids = np.zeros((len(rows), 32), dtype=np.int64)
        mask = np.zeros((len(rows), 32), dtype=np.int64)
        for i, r in enumerate(rows):
            ids[i, :len(r)], mask[i, :len(r)] = r, 1
        return {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask)}

    batches = [torch.from_numpy(A[0:2]), padded([A[2], B[0]]), padded([B[1]])]
    mine = os.path.join(work, "hooks.safetensors")
    loftq_statistics.write(mine, loftq_statistics.collect(model, batches))
    diag = loftq_statistics.collect(model, batches, target_modules=TARGETS, full=False)

    # The tool on the same tokens (A and B separately: the sums add).
    run(loftq, "calibrate", "--input", ck, "--tokens", os.path.join(work, "a.npy"), "--output",
        os.path.join(work, "ca"), "--quiet")
    run(loftq, "calibrate", "--input", ck, "--tokens", os.path.join(work, "b.npy"), "--output",
        os.path.join(work, "cb"), "--quiet")
    sa, ta, _ = read_statistics(os.path.join(work, "ca", "statistics.safetensors"))
    sb, tb, _ = read_statistics(os.path.join(work, "cb", "statistics.safetensors"))
    sums, tokens, shares = read_statistics(mine)

    modules = ["model.layers.%d.%s.%s" % (l, "self_attn" if t in TARGETS[:4] else "mlp", t)
               for l in range(cfg["layers"]) for t in TARGETS]
    if sorted(sums) != sorted(modules):
        fail("modules in the hooks' file: %s" % sorted(sums))
    expect_shares = {}
    for l in range(cfg["layers"]):
        p = "model.layers.%d." % l
        expect_shares[p + "self_attn.k_proj"] = expect_shares[p + "self_attn.v_proj"] = p + "self_attn.q_proj"
        expect_shares[p + "mlp.up_proj"] = p + "mlp.gate_proj"
    if shares != expect_shares:
        fail("shares %s" % shares)
    total = A.size + B.size
    worst = 0.0
    for m in modules:
        if tokens[m] != total or ta[m] + tb[m] != total:
            fail("%s: tokens %d (hooks), %d (calibrate), expected %d" % (m, tokens[m], ta[m] + tb[m], total))
        ref = sa[m] + sb[m]
        if not np.array_equal(sums[m], sums[m].T):
            fail("%s: xtx not symmetric" % m)
        rel = float(np.abs(sums[m] - ref).max() / np.abs(ref).max())
        worst = max(worst, rel)
        if not rel <= 1e-5:
            fail("%s: xtx differs from calibrate's by %g relative" % (m, rel))
        d = diag.xtx[diag.shares.get(m, m)]
        if not np.allclose(d.numpy(), np.diag(sums[m]), rtol=1e-12, atol=0):
            fail("%s: full=False differs from the diagonal of the full sums" % m)
    print("stories260K, %d tokens: %d modules, largest difference from calibrate %.3g relative" %
          (total, len(modules), worst))

    # loftq model takes the file.
    out = os.path.join(work, "out")
    run(loftq, "model", "--input", ck, "--output", out, "--rank", "4", "--iters", "2", "--quiet",
        "--calibration", mine)
    report = json.load(open(os.path.join(out, "loftq_report.json")))
    if report["calibration"].get("data_free_targets"):
        fail("report: data-free targets %s" % report["calibration"]["data_free_targets"])
    for m in modules:
        c = report["tensors"].get(m + ".weight", {}).get("calibration", {})
        if c.get("metric") != "full" or c.get("tokens") != total or c.get("shared") != (m in expect_shares):
            fail("report on %s: %s" % (m, c))
        e = c["output_rel_err"]
        if not e["loftq_data_aware"] < e["qlora"]:
            fail("%s: data-aware output error %g, QLoRA's %g" % (m, e["loftq_data_aware"], e["qlora"]))
    print("loftq model --calibration: %d targets with full statistics, data-aware below QLoRA" % len(modules))

    # The diagonal form too: 1-D xtx, read as diagonal statistics.
    mine_diag = os.path.join(work, "hooks_diag.safetensors")
    loftq_statistics.write(mine_diag, diag)
    out = os.path.join(work, "out_diag")
    run(loftq, "model", "--input", ck, "--output", out, "--rank", "4", "--iters", "2", "--quiet",
        "--calibration", mine_diag)
    report = json.load(open(os.path.join(out, "loftq_report.json")))
    metrics = {report["tensors"][m + ".weight"]["calibration"]["metric"] for m in modules}
    if metrics != {"diagonal"}:
        fail("report on the diagonal file: metrics %s" % metrics)
    return 0


if __name__ == "__main__":
    sys.exit(main())
