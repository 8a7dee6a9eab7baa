"""Tiny synthetic Hugging Face models and tokenizers, built locally (tests never download).

    make_tiny_hf_model(tmp_path, arch="llama", dtype="float32", tied=None, sharded=False) -> Path

writes config.json, *.safetensors (sharded with an index when asked), tokenizer.json and
tokenizer_config.json into tmp_path / <a name from the arguments>, and returns that folder.
Weights are random but seeded, so two calls with the same arguments give the same model.

`arch` is one of FAMILIES: the plain families plus variants that exercise one feature ("llama3":
Llama 3.1 RoPE scaling, "phi3-longrope": Phi-3 LongRoPE factors). Each family's config sets what
makes its forward pass differ from llama's (decoupled head_dim, sliding windows shorter than a
64-token prompt, soft-capping, partial rotary), so parity tests exercise it.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=256)
VOCAB_SIZE = 320  # model vocab; the BPE tokenizer has 300 tokens, so the last 20 ids are padding
TOKENIZER_VOCAB = 300

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Quantization maps 16-bit weights to 4-bit codes in blocks of 32 values.",
    "Hello world! Hello again, world; 12345 and 67890.",
    "Small language models run well on a laptop CPU.",
    "<|im_start|>user\nWhat is 2 + 2?<|im_end|>\n<|im_start|>assistant\n4<|im_end|>",
]
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]  # ids 0, 1, 2 (SmolLM2's layout)
USER_TOKEN = "<tool>"  # a non-special added token -> GGUF token type 4 (user-defined)
CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
                 "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")

_CONFIGS = {"llama": ("LlamaConfig", "LlamaForCausalLM"), "mistral": ("MistralConfig", "MistralForCausalLM"),
            "qwen2": ("Qwen2Config", "Qwen2ForCausalLM"), "qwen3": ("Qwen3Config", "Qwen3ForCausalLM"),
            "gemma2": ("Gemma2Config", "Gemma2ForCausalLM"), "gemma3": ("Gemma3TextConfig", "Gemma3ForCausalLM"),
            "phi3": ("Phi3Config", "Phi3ForCausalLM"),
            "gemma3-vlm": ("Gemma3Config", "Gemma3ForConditionalGeneration")}

PHI3_SPECIALS = ("<|endoftext|>", "<|end|>")
HEAD_DIM = 32  # qwen3 / gemma: decoupled from hidden / heads (= 16)
SLIDING_WINDOW = 8  # gemma's local layers: shorter than any parity prompt
ROPE_DIM_PHI3 = 8  # partial_rotary_factor 0.5 of head_dim 16: LongRoPE has ROPE_DIM_PHI3 / 2 factors
# name -> (config class family, config overrides, default tied, default tokenizer)
_FAMILIES = {
    "llama": ("llama", {}, False, "bpe"),
    "mistral": ("mistral", {}, False, "bpe"),
    "qwen2": ("qwen2", {}, False, "bpe"),
    "llama3": ("llama", dict(rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0,
                                               high_freq_factor=4.0, original_max_position_embeddings=64),
                             rope_theta=500000.0), False, "bpe"),
    "qwen3": ("qwen3", dict(head_dim=HEAD_DIM), False, "bpe"),
    "gemma2": ("gemma2", dict(head_dim=HEAD_DIM, query_pre_attn_scalar=HEAD_DIM, sliding_window=SLIDING_WINDOW,
                              attn_logit_softcapping=50.0, final_logit_softcapping=30.0), True, "spm"),
    # 6 layers: 5 local, 1 global (the real models' pattern); two RoPE bases
    "gemma3": ("gemma3", dict(head_dim=HEAD_DIM, query_pre_attn_scalar=HEAD_DIM, sliding_window=SLIDING_WINDOW,
                              num_hidden_layers=6), True, "spm"),
    # Phi-3-mini's tokenizer: SentencePiece plus <|endoftext|> (llama.cpp's vocabulary loader expects it
    # in a model named phi3)
    "phi3": ("phi3", dict(partial_rotary_factor=0.5, original_max_position_embeddings=256, pad_token_id=None),
             False, "spm"),
    # Gemma 3 4B's layout: a vision-language checkpoint (the decoder under text_config and a name prefix,
    # plus a vision tower the text GGUF leaves out), linear RoPE scaling 8 on the global layers
    "gemma3-vlm": ("gemma3-vlm", dict(head_dim=HEAD_DIM, query_pre_attn_scalar=HEAD_DIM, sliding_window=SLIDING_WINDOW,
                                      num_hidden_layers=6, rope_parameters={
                                          "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6},
                                          "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}}),
                   True, "spm"),
    # context 512 > original 256: long factors apply beyond 256 tokens, short ones below
    "phi3-longrope": ("phi3", dict(partial_rotary_factor=0.5, max_position_embeddings=512,
                                   original_max_position_embeddings=256, pad_token_id=None,
                                   rope_scaling=dict(rope_type="longrope",
                                                     long_factor=[1.0, 1.5, 2.25, 3.5],
                                                     short_factor=[1.0, 1.05, 1.1, 1.2])), False, "spm"),
}
FAMILIES = tuple(_FAMILIES)
FAMILY_ARCH = {name: {"gemma3-vlm": "gemma3"}.get(f[0], f[0]) for name, f in _FAMILIES.items()}  # -> models.yaml arch
TINY_VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=28,
                   patch_size=14)
NEW_FAMILIES = ("llama3", "qwen3", "gemma2", "gemma3", "phi3", "phi3-longrope")


def make_bpe_tokenizer(out_dir: Path) -> Path:
    """A byte-level BPE (SmolLM2-style: single digits, then GPT-2's regex) trained on SENTENCES."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=TOKENIZER_VOCAB - 1, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(SENTENCES * 20, trainer)
    tok.add_tokens([USER_TOKEN])
    out_dir.mkdir(parents=True, exist_ok=True)
    tok.save(str(out_dir / "tokenizer.json"))
    (out_dir / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "GPT2Tokenizer", "bos_token": "<|im_start|>", "eos_token": "<|im_end|>",
        "unk_token": "<|endoftext|>", "pad_token": "<|im_end|>", "add_prefix_space": False,
        "chat_template": CHAT_TEMPLATE, "model_max_length": 256,
    }, indent=1))
    return out_dir


def make_spm_tokenizer(out_dir: Path, pad_to: int | None = None, extra_specials: tuple[str, ...] = ()) -> Path:
    """A Llama-2-style tokenizer.json: SentencePiece BPE with byte fallback, "▁" for spaces. pad_to: fill
    the vocabulary up to that size with "<unusedN>" pieces, as Gemma's tokenizer has them; extra_specials:
    special tokens added after the pieces (Phi-3's <|endoftext|>, <|end|>)."""
    from tokenizers import Tokenizer, decoders, models, normalizers

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    chars = ["▁", "e", "t", "h", "o", "l", "w", "r", "d", "a"]
    merges = [("▁", "t"), ("h", "e"), ("▁t", "he"), ("l", "l"), ("e", "ll"), ("ell", "o"), ("▁", "w"),
              ("o", "r"), ("▁w", "or"), ("l", "d")]
    for m in merges:  # merged tokens first, then single characters, as sentencepiece orders them
        vocab.setdefault("".join(m), len(vocab))
    for c in chars:
        vocab.setdefault(c, len(vocab))
    while pad_to is not None and len(vocab) < pad_to:
        vocab[f"<unused{len(vocab)}>"] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True,
                               fuse_unk=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    tok.add_special_tokens(["<unk>", "<s>", "</s>", *extra_specials])
    out_dir.mkdir(parents=True, exist_ok=True)
    tok.save(str(out_dir / "tokenizer.json"))
    (out_dir / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
        "add_bos_token": True, "add_eos_token": False,
    }, indent=1))
    return out_dir


def write_sentencepiece_model(path: Path, pieces: list[tuple[str, float, int]], add_dummy_prefix: bool) -> Path:
    """Hand-encode a sentencepiece ModelProto (pieces = field 1, normalizer_spec = field 3)."""

    def varint(n: int) -> bytes:
        out = bytearray()
        while True:
            out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
            n >>= 7
            if not n:
                return bytes(out)

    def field(num: int, wire: int, payload: bytes) -> bytes:
        head = varint(num << 3 | wire)
        return head + (varint(len(payload)) + payload if wire == 2 else payload)

    buf = b""
    for text, score, typ in pieces:
        body = field(1, 2, text.encode()) + field(2, 5, struct.pack("<f", score))
        if typ != 1:  # NORMAL is the default and left out, as sentencepiece does
            body += field(3, 0, varint(typ))
        buf += field(1, 2, body)
    buf += field(3, 2, field(1, 2, b"identity") + field(3, 0, varint(int(add_dummy_prefix))))
    path.write_bytes(buf)
    return path


def make_tiny_hf_model(tmp_path: Path, arch: str = "llama", dtype: str = "float32", tied: bool | None = None,
                       sharded: bool = False, tokenizer: str | None = None, seed: int = 0,
                       **config_overrides) -> Path:
    """Save a tiny random `arch` causal LM (one of FAMILIES) in `dtype` and return its folder. tied and
    tokenizer default to the family's usual (Gemma: tied head, SentencePiece-style vocabulary)."""
    import torch
    import transformers

    family, family_overrides, tied_default, tokenizer_default = _FAMILIES[arch]
    tied = tied_default if tied is None else tied
    tokenizer = tokenizer or tokenizer_default
    cfg_cls, model_cls = (getattr(transformers, n) for n in _CONFIGS[family])
    kwargs = dict(TINY, vocab_size=VOCAB_SIZE, tie_word_embeddings=tied, bos_token_id=1, eos_token_id=2)
    kwargs.update(family_overrides)
    kwargs.update(config_overrides)
    if family == "gemma3-vlm":  # image tokens among the padded vocabulary's last ids
        config = cfg_cls(text_config=kwargs, vision_config=TINY_VISION, mm_tokens_per_image=4, tie_word_embeddings=tied,
                         image_token_index=VOCAB_SIZE - 3, boi_token_index=VOCAB_SIZE - 2, eoi_token_index=VOCAB_SIZE - 1)
    else:
        config = cfg_cls(**kwargs)
    torch.manual_seed(seed)
    model = model_cls(config).to(getattr(torch, dtype)).eval()
    with torch.no_grad():  # norms start at exactly 1.0 (Gemma: 0.0): perturb them so tests see real values
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.add_(torch.randn_like(p) * 0.1)
    out = Path(tmp_path) / f"{arch}-{dtype}-{'tied' if tied else 'untied'}{'-sharded' if sharded else ''}-{tokenizer}"
    model.save_pretrained(out, safe_serialization=True, max_shard_size="40KB" if sharded else "10GB")
    if tokenizer == "bpe":
        make_bpe_tokenizer(out)
    else:  # Gemma's vocabulary fills the model's (llama.cpp's converter trims embeddings past it)
        make_spm_tokenizer(out, pad_to=VOCAB_SIZE if family.startswith("gemma") else None,
                           extra_specials=PHI3_SPECIALS if family == "phi3" else ())
    return out


def train_tiny_model(folder: Path, steps: int = 60, seed: int = 0) -> Path:
    """A few AdamW steps on a noisy token-permutation language (next token = perm[token] 70% of the time),
    saved back in place. A random model's logits are near-uniform, so quantization noise flips its top-1
    at a few percent of positions; after this its predictions have margins like a trained LM's, and
    top-1 / perplexity comparisons between runtimes measure the runtimes, not near-ties."""
    import torch
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(TOKENIZER_VOCAB - 3, generator=g) + 3
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(steps):
        x = torch.randint(3, TOKENIZER_VOCAB, (8, 32), generator=g)
        follow = torch.rand(8, 32, generator=g) < 0.7
        for j in range(1, x.shape[1]):
            x[:, j] = torch.where(follow[:, j], perm[x[:, j - 1] - 3], x[:, j])
        loss = model(input_ids=x, labels=x).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval().save_pretrained(folder, safe_serialization=True)
    return folder
