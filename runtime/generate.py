"""Text generation: sampling (greedy, temperature, top-p) and streaming of decoded text."""
from __future__ import annotations

import codecs
from dataclasses import dataclass
from typing import Iterator

import numpy as np


@dataclass
class SamplingOptions:
    temperature: float = 0.0   # 0 = greedy
    top_p: float = 1.0
    seed: int | None = None


def sample(logits: np.ndarray, opts: SamplingOptions, rng: np.random.Generator) -> int:
    if opts.temperature <= 0:
        return int(np.argmax(logits))
    z = logits.astype(np.float64) / opts.temperature
    p = np.exp(z - z.max())
    p /= p.sum()
    if opts.top_p < 1.0:
        order = np.argsort(-p)
        keep = np.cumsum(p[order]) - p[order] < opts.top_p    # smallest prefix with mass >= top_p
        mask = np.zeros_like(p, dtype=bool)
        mask[order[keep]] = True
        p = np.where(mask, p, 0.0)
        p /= p.sum()
    return int(rng.choice(len(p), p=p))


def generate(engine, tokenizer, prompt_ids: list[int], max_tokens: int, opts: SamplingOptions,
             stop_ids: set[int] | None = None) -> Iterator[str]:
    """Yields decoded text pieces as they complete (UTF-8 split across tokens is held back)."""
    rng = np.random.default_rng(opts.seed)
    stop_ids = stop_ids if stop_ids is not None else set(tokenizer.eog_ids)
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    engine.reset()
    logits = engine.eval(np.asarray(prompt_ids, dtype=np.int32))
    for _ in range(max_tokens):
        token = sample(logits, opts, rng)
        if token in stop_ids:
            break
        # SentencePiece pieces carry their leading space as "▁"; keep it (the prompt precedes them)
        text = decoder.decode(tokenizer.token_to_piece(token, lstrip=False))
        if text:
            yield text
        if engine.n_past >= engine.n_ctx:
            break
        logits = engine.eval(np.asarray([token], dtype=np.int32))
    tail = decoder.decode(b"", final=True)
    if tail:
        yield tail
