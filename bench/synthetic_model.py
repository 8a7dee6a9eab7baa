"""Write a synthetic Llama-3.2-shaped Hugging Face model: random bf16 weights, real hyper-parameters.

    python bench/synthetic_model.py OUT_DIR [--scale 3b|1b|tiny] [--shard-gb 5] [--seed 0]

The folder looks like a transformers checkpoint of Llama 3.2 (config.json, model-0000x-of-0000y.safetensors,
model.safetensors.index.json, tokenizer.json, tokenizer_config.json), so that
`quantconv export` and transformers read it as they would the real model. The tensor names, order and
shapes come from transformers' LlamaForCausalLM built on the meta device (no memory); the tied head is
left out as save_pretrained does. Each tensor is generated and written in row chunks straight into its
shard, so the generator holds a few hundred MB whatever the model size.

Weights: normal(0, 0.02) for the embedding and every linear (transformers' initializer_range), 1.0 for
the RMSNorm weights. The tokenizer is a byte-level BPE with Llama 3's pre-tokenizer regex, trained here
on the repository's docs (the real vocabulary cannot be downloaded), its special tokens placed at Llama 3's
ids 128000+ and the ids in between left as padding, so the model vocabulary is 128256 as in the real one.
"""
from __future__ import annotations

import argparse
import json
import math
import struct
import sys
import time
from pathlib import Path

import numpy as np

# Llama 3.2 3B / 1B hyper-parameters (their config.json on the hub); "tiny" keeps the 3B's structure
# (GQA 3:1, llama3 RoPE, tied head, 128256 vocab) at a size for a quick check.
_COMMON = dict(vocab_size=128256, tie_word_embeddings=True, rope_theta=500000.0, max_position_embeddings=131072,
               rms_norm_eps=1e-5, num_key_value_heads=8, head_dim=128, bos_token_id=128000, eos_token_id=128001,
               hidden_act="silu", initializer_range=0.02,
               rope_scaling={"rope_type": "llama3", "factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                             "original_max_position_embeddings": 8192})
SCALES = {
    "3b": dict(hidden_size=3072, num_hidden_layers=28, num_attention_heads=24, intermediate_size=8192),
    "1b": dict(hidden_size=2048, num_hidden_layers=16, num_attention_heads=32, head_dim=64, intermediate_size=8192),
    "tiny": dict(hidden_size=384, num_hidden_layers=2, num_attention_heads=3, num_key_value_heads=1,
                 intermediate_size=1024),
}
NAMES = {"3b": "synthetic-Llama-3.2-3B", "1b": "synthetic-Llama-3.2-1B", "tiny": "synthetic-Llama-3.2-tiny"}

# Llama 3's pre-tokenizer split (tokenizer.json of meta-llama/Llama-3.2-*); models.yaml maps it to llama-bpe
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                r"\s*[\r\n]+|\s+(?!\S)|\s+")
SPECIAL_BASE = 128000
SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>", "<|reserved_special_token_1|>",
            "<|finetune_right_pad_id|>", "<|reserved_special_token_2|>", "<|start_header_id|>",
            "<|end_header_id|>", "<|eom_id|>", "<|eot_id|>", "<|python_tag|>"]
CHAT_TEMPLATE = ("{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
                 "{{ m['content'] | trim }}<|eot_id|>{% endfor %}"
                 "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}")
BPE_VOCAB = 8000          # trained merges: enough for realistic token lengths, trained in seconds
CHUNK_ELEMS = 16 << 20    # values generated at once (64 MB of float32)


def llama_config(scale: str):
    import transformers

    cfg = transformers.LlamaConfig(**{**_COMMON, **SCALES[scale]}, dtype="bfloat16")
    cfg.architectures = ["LlamaForCausalLM"]
    cfg._name_or_path = NAMES[scale]
    return cfg


def tensor_layout(cfg) -> list[tuple[str, tuple[int, ...]]]:
    """(name, shape) of every saved tensor in state-dict order, from transformers' own model on 'meta'."""
    import torch
    import transformers

    with torch.device("meta"):
        model = transformers.LlamaForCausalLM(cfg)
    out = [(n, tuple(t.shape)) for n, t in model.state_dict().items()]
    if cfg.tie_word_embeddings:   # save_pretrained drops the tied copy
        out = [(n, s) for n, s in out if n != "lm_head.weight"]
    return out


def shard(layout, max_bytes: int) -> list[list[tuple[str, tuple[int, ...]]]]:
    """Split in order into shards of at most max_bytes of bf16 (a bigger tensor gets a shard of its own)."""
    shards, cur, size = [], [], 0
    for name, shape in layout:
        n = math.prod(shape) * 2
        if cur and size + n > max_bytes:
            shards.append(cur)
            cur, size = [], 0
        cur.append((name, shape))
        size += n
    if cur:
        shards.append(cur)
    return shards


def to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> bf16 bit patterns, round to nearest even (as torch's .to(torch.bfloat16))."""
    u = x.view(np.uint32)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def write_tensor(f, rng: np.random.Generator, name: str, shape: tuple[int, ...]) -> None:
    n = math.prod(shape)
    if len(shape) == 1:   # RMSNorm weights: exactly 1.0, as transformers initializes them
        f.write(to_bf16_bits(np.ones(n, np.float32)).tobytes())
        return
    done = 0
    while done < n:
        k = min(CHUNK_ELEMS, n - done)
        x = rng.standard_normal(k, dtype=np.float32)
        x *= 0.02
        f.write(to_bf16_bits(x).tobytes())
        done += k


def write_shard(path: Path, tensors, rng, on_tensor) -> None:
    """One safetensors file, streamed: the header (known from the shapes) first, then each tensor."""
    header, off = {}, 0
    for name, shape in tensors:
        n = math.prod(shape) * 2
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [off, off + n]}
        off += n
    header["__metadata__"] = {"format": "pt"}
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)   # the data buffer starts 8-aligned, as safetensors writes it
    tmp = path.with_name(path.name + ".part")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        for name, shape in tensors:
            write_tensor(f, rng, name, shape)
            on_tensor(name, shape)
    tmp.rename(path)


def write_tokenizer(out: Path, cfg) -> None:
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    repo = Path(__file__).resolve().parent.parent
    text = [p.read_text(encoding="utf-8", errors="replace") for p in sorted(repo.glob("docs/**/*.md"))]
    text += [p.read_text(encoding="utf-8", errors="replace") for p in sorted(repo.glob("**/*.py"))[:200]]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=BPE_VOCAB, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(text, trainer)
    tok.post_processor = processors.TemplateProcessing(single="<|begin_of_text|> $A",
                                                       pair="<|begin_of_text|> $A <|begin_of_text|> $B",
                                                       special_tokens=[("<|begin_of_text|>", SPECIAL_BASE)])
    tj = json.loads(tok.to_str())
    # Llama 3's special tokens sit at 128000+; the ids between the trained vocabulary and them are padding
    tj["added_tokens"] = [{"id": SPECIAL_BASE + i, "content": s, "single_word": False, "lstrip": False,
                           "rstrip": False, "normalized": False, "special": True} for i, s in enumerate(SPECIALS)]
    if SPECIAL_BASE + len(SPECIALS) > cfg.vocab_size:
        raise SystemExit(f"vocab_size {cfg.vocab_size} is too small for Llama 3's special tokens")
    (out / "tokenizer.json").write_text(json.dumps(tj, ensure_ascii=False), encoding="utf-8")
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>",
        "add_bos_token": True, "clean_up_tokenization_spaces": False, "chat_template": CHAT_TEMPLATE,
        "model_max_length": cfg.max_position_embeddings}, indent=1), encoding="utf-8")


def generate(out: Path, scale: str = "3b", shard_gb: float = 5.0, seed: int = 0, log=print) -> Path:
    cfg = llama_config(scale)
    layout = tensor_layout(cfg)
    shards = shard(layout, int(shard_gb * 1e9))
    total = sum(math.prod(s) for _, s in layout)
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob("model*.safetensors*"):   # a rerun with another shard count leaves no strays
        stale.unlink()
    log(f"{NAMES[scale]}: {total / 1e9:.2f}B parameters, {len(layout)} tensors, {len(shards)} shard(s) "
        f"of bf16 ({total * 2 / 1e9:.2f} GB) -> {out}")
    cfg.save_pretrained(out)   # config.json as transformers writes it
    write_tokenizer(out, cfg)
    rng = np.random.default_rng(seed)
    t0, written = time.perf_counter(), [0]

    def on_tensor(name, shape):
        written[0] += math.prod(shape)
        if name.endswith("down_proj.weight") or len(shape) == 2 and math.prod(shape) > 1e8 or name == "model.norm.weight":
            el = time.perf_counter() - t0
            log(f"  {written[0] / total:6.1%}  {name:45s} {el:6.1f} s", flush=True)

    weight_map = {}
    for i, tensors in enumerate(shards):
        fname = (f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" if len(shards) > 1 else "model.safetensors")
        write_shard(out / fname, tensors, rng, on_tensor)
        weight_map.update({n: fname for n, _ in tensors})
    if len(shards) > 1:
        (out / "model.safetensors.index.json").write_text(json.dumps(
            {"metadata": {"total_size": total * 2, "total_parameters": total}, "weight_map": weight_map}, indent=2))
    log(f"done in {time.perf_counter() - t0:.1f} s")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path, help="output folder (created)")
    ap.add_argument("--scale", choices=sorted(SCALES), default="3b", help="Llama 3.2 3B, 1B, or a tiny check")
    ap.add_argument("--shard-gb", type=float, default=5.0, help="max shard size in GB (the hub's 3B has 2 shards)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    generate(args.out, args.scale, args.shard_gb, args.seed)
    import resource
    print(f"generator peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB", file=sys.stderr)


if __name__ == "__main__":
    main()
