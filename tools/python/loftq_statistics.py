"""Input statistics of a PyTorch model's linear layers, as loftq's calibration file.

`collect` records, with forward pre-hooks, the input of every ``torch.nn.Linear``
whose module path is or ends in one of ``target_modules`` (as PEFT matches
them) while the model runs over calibration batches, and sums x xᵀ (or x²,
with ``full=False``) over all tokens in float64. `write` stores the sums as the
statistics file that ``loftq model --calibration FILE`` reads (docs/formats.md,
"The project's statistics file"): a safetensors file with ``<module>.xtx``
(F64, [n, n] or [n]) and ``<module>.tokens`` (I64, shape []), written with the
standard library, torch and numpy only. Module paths are the checkpoint's,
e.g. ``model.layers.0.self_attn.q_proj``.

Usage with transformers (any causal LM whose linears are torch.nn.Linear)::

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from loftq_statistics import collect, write

    name = "HuggingFaceTB/SmolLM-135M"  # a LLaMA-architecture model
    model = AutoModelForCausalLM.from_pretrained(name, torch_dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(name)
    tok.pad_token = tok.pad_token or tok.eos_token
    texts = open("calibration.txt").read().split("\\n\\n")[:128]
    batches = [tok(texts[i:i + 8], return_tensors="pt", padding=True, truncation=True, max_length=512)
               for i in range(0, len(texts), 8)]
    write("statistics.safetensors", collect(model, batches))

then ``loftq model --input <checkpoint dir> --output out --calibration statistics.safetensors``.
A batch is a tensor of token ids or a mapping of keyword arguments for the
model (a tokenizer's output); tokens where its ``attention_mask`` is 0 are left
out. Full statistics hold 8 n² bytes per targeted linear while collecting
(n its in_features), which for a large model may not fit in memory; the
diagonal (``full=False``) takes 8 n bytes. Linears that
read the same tensor in every batch (q/k/v, gate/up) are stored once, the
others named in ``loftq.shares.*``.
"""

import json
import os
import struct
import tempfile

import torch

LLAMA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class Statistics:
    """Per-module float64 sums and token counts; ``shares`` maps a module to the
    module whose input it read in every batch (the same tensor object)."""

    def __init__(self):
        self.xtx = {}
        self.tokens = {}
        self.shares = {}


def collect(model, batches, target_modules=LLAMA_TARGETS, full=True):
    """Runs ``model`` over ``batches`` (no gradients) and returns the Statistics
    of every targeted linear's input."""
    linears = {name: m for name, m in model.named_modules()
               if isinstance(m, torch.nn.Linear) and any(name == t or name.endswith("." + t) for t in target_modules)}
    if not linears:
        raise ValueError("no torch.nn.Linear module ends in any of %s" % (tuple(target_modules),))
    stats = Statistics()
    # A module shares an earlier module's entry only if it read the very same
    # tensor object in every batch (q/k/v, gate/up): their sums are then equal
    # bit for bit, and the reduction runs once per input.
    same_as = {}  # module -> the first module that read its input, None once they differ
    state = {"mask": None, "last": None, "batch": -1}

    def reduce(x):
        x = x.reshape(-1, x.shape[-1])
        mask = state["mask"]
        if mask is not None:
            if mask.numel() != x.shape[0]:
                raise ValueError("attention_mask has %d positions, a linear's input %d rows"
                                 % (mask.numel(), x.shape[0]))
            x = x[mask.reshape(-1).to(x.device) != 0]
        x = x.to(torch.float64)
        return (x.T @ x if full else (x * x).sum(dim=0)), x.shape[0]

    def hook(name):
        def pre_hook(module, args):
            if not args:
                raise ValueError("%s was called without a positional input; its input cannot be seen" % name)
            x = args[0]
            last = state["last"]
            if last is not None and last[0] is x:
                increment, count, first = last[1], last[2], last[3]
            else:
                increment, count = reduce(x)
                first = name
                state["last"] = (x, increment, count, name)
            if state["batch"] == 0:
                same_as[name] = first
            elif same_as.get(name) != first:
                same_as[name] = None
            if name in stats.xtx:
                stats.xtx[name] += increment
                stats.tokens[name] += count
            else:
                stats.xtx[name] = increment.clone()
                stats.tokens[name] = count
        return pre_hook

    handles = [m.register_forward_pre_hook(hook(name)) for name, m in linears.items()]
    try:
        with torch.no_grad():
            for batch in batches:
                state["batch"] += 1
                state["last"] = None
                if isinstance(batch, torch.Tensor):
                    state["mask"] = None
                    model(batch)
                else:
                    state["mask"] = batch.get("attention_mask")
                    model(**batch)
    finally:
        for h in handles:
            h.remove()
        state["last"] = None
    for name in list(stats.xtx):
        owner = same_as.get(name)
        if owner is not None and owner != name and same_as.get(owner) == owner:
            stats.shares[name] = owner
    for name, owner in stats.shares.items():
        del stats.xtx[name], stats.tokens[name]
    return stats


def write(path, stats):
    """Writes ``stats`` to ``path`` as loftq's statistics file (F64 sums, I64
    counts); through a temporary file in the same directory, so that ``path``
    is either absent or complete."""
    if not stats.xtx:
        raise ValueError("no statistics to write")
    tensors = []
    for name in sorted(stats.xtx):
        if stats.tokens[name] < 1:
            raise ValueError("%s: no tokens were summed" % name)
        xtx = stats.xtx[name].detach().to("cpu", torch.float64)
        if xtx.dim() == 2:  # a GEMM's two triangles may differ in the last bits; the file's are equal
            xtx = (xtx + xtx.T) * 0.5
        xtx = xtx.contiguous()
        tensors.append((name + ".xtx", "F64", list(xtx.shape), xtx.numpy().astype("<f8").tobytes()))
        tensors.append((name + ".tokens", "I64", [], struct.pack("<q", stats.tokens[name])))
    metadata = {"loftq.format": "loftq.calibration.v1"}
    metadata.update({"loftq.shares." + t: m for t, m in sorted(stats.shares.items())})
    header, offset = {"__metadata__": metadata}, 0
    for name, dtype, shape, data in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)  # the tensor data 8-byte aligned, as safetensors writes it
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=os.path.basename(path) + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            umask = os.umask(0)
            os.umask(umask)
            os.fchmod(f.fileno(), 0o666 & ~umask)  # mkstemp's 0600 suits the temporary only
            f.write(struct.pack("<Q", len(text)))
            f.write(text)
            for _, _, _, data in tensors:
                f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
