"""Calibration text -> token windows (`--calib PATH|DATASET|self`, `--nsamples`, `--seqlen`, seeded).

- PATH: a text file, tokenized with the model's own tokenizer (from its GGUF tokenizer metadata), cut
  into consecutive windows of `seqlen` tokens, `nsamples` of them picked at random (seeded).
- DATASET: an HF dataset name (needs the `datasets` package and a network or a local cache).
- self: data-free calibration text sampled from the float model itself (LLM-QAT; the Norm Tweaking
  paper): the first token drawn uniformly, the next few greedily, the rest sampled from the softmax.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from quantconv.errors import QuantconvError


def _tokenizer(source):
    from quantconv.formats.tokenizer import Tokenizer

    meta = {k: v for k, v in source.tokenizer_metadata().items() if k != "_types"}
    return Tokenizer.from_gguf_metadata(meta)


def _windows(ids: list[int], nsamples: int, seqlen: int, seed: int, what: str) -> torch.Tensor:
    need = nsamples * seqlen
    if len(ids) < need:
        raise QuantconvError(f"calibration text {what} has {len(ids):,} tokens, fewer than --nsamples x --seqlen = "
                             f"{nsamples} x {seqlen} = {need:,}; give a longer text or lower --nsamples/--seqlen")
    n_windows = len(ids) // seqlen
    pick = np.sort(np.random.default_rng(seed).choice(n_windows, size=nsamples, replace=False))
    arr = np.asarray(ids[: n_windows * seqlen], dtype=np.int64).reshape(n_windows, seqlen)
    return torch.from_numpy(arr[pick].copy())


def _dataset_text(name: str) -> str:
    try:
        import datasets  # noqa: F401
    except ImportError:
        raise QuantconvError(f"--calib '{name}' is neither a file nor 'self', and reading HF datasets needs the "
                             "`datasets` package; pass a text file (e.g. wikitext-2-valid.txt) or --calib self") from None
    try:
        ds = datasets.load_dataset(name, split="train")
    except Exception as e:  # offline, unknown name, ...
        raise QuantconvError(f"could not load dataset '{name}' ({type(e).__name__}); offline? pass a text file "
                             "or --calib self") from None
    column = "text" if "text" in ds.column_names else ds.column_names[0]
    return "\n".join(str(t) for t in ds[column])


def calibration_ids(calib: str, source, nsamples: int = 128, seqlen: int = 512, seed: int = 0,
                    device: str = "cpu") -> torch.Tensor:
    """(nsamples, seqlen) int64 token ids."""
    if nsamples < 1 or seqlen < 2:
        raise QuantconvError(f"--nsamples must be >= 1 and --seqlen >= 2 (got {nsamples}, {seqlen})")
    if calib == "self":
        return self_generated(source, nsamples, seqlen, seed, device)
    path = Path(calib)
    if path.is_file():
        text = path.read_text(encoding="utf-8", errors="replace")
        if not text.strip():
            raise QuantconvError(f"calibration file {path} is empty; pass a text file with real text")
        what = str(path)
    elif path.suffix or calib.startswith((".", "/", "~")):
        raise QuantconvError(f"calibration file {calib} does not exist; pass an existing text file or --calib self")
    else:
        text, what = _dataset_text(calib), f"dataset {calib}"
    return _windows(_tokenizer(source).encode(text), nsamples, seqlen, seed, what)


@torch.no_grad()
def self_generated(source, nsamples: int, seqlen: int, seed: int = 0, device: str = "cpu",
                   greedy_first: int = 3, batch: int = 32) -> torch.Tensor:
    """Sample calibration sequences from the float model (all layers in memory: this is the one step
    that holds the whole float model)."""
    from quantconv.convert.torch_model import DecoderConfig, Head, Layer, Rope

    cfg = DecoderConfig.from_source(source)
    head = Head(source, cfg, device)
    layers = [Layer(source, cfg, i, device) for i in range(cfg.n_layers)]
    rope = Rope(cfg, seqlen, device)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    vocab = head.out.shape[0]
    out = []
    for b0 in range(0, nsamples, batch):
        nb = min(batch, nsamples - b0)
        ids = torch.randint(0, vocab, (nb, 1), generator=gen)
        caches = [dict() for _ in layers]
        for pos in range(seqlen - 1):
            x = head.embed_tokens(ids[:, -1:].to(device))
            for layer, cache in zip(layers, caches):
                x = layer.step(x, rope, pos, cache)
            probs = torch.softmax(head.logits(x)[:, -1].float().cpu(), dim=-1)
            nxt = probs.argmax(-1, keepdim=True) if pos < greedy_first else torch.multinomial(probs, 1, generator=gen)
            ids = torch.cat([ids, nxt], dim=1)
        out.append(ids)
    return torch.cat(out)
