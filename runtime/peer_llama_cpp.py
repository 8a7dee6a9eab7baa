"""Stock llama.cpp (through llama-cpp-python) as a peer: load a GGUF, generate, score perplexity.

Perplexity protocol (the same as `quantconv eval`): tokenize the whole text without BOS, cut it into
consecutive windows of `ctx` tokens, score every position after the first of each window, and report
exp(mean NLL). llama-perplexity's own protocol (BOS, second half only) differs; compare like with like.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from quantconv.errors import QuantconvError


def _llama_cpp():
    try:
        import llama_cpp
    except ImportError:
        raise QuantconvError("llama-cpp-python is not installed; run `bash scripts/install-peers.sh`") from None
    return llama_cpp


def load(path: str, ctx: int = 512, threads: int = 2, logits_all: bool = False):
    llama_cpp = _llama_cpp()
    try:
        return llama_cpp.Llama(model_path=str(path), n_ctx=ctx, n_threads=threads, n_threads_batch=threads,
                               n_batch=ctx, logits_all=logits_all, verbose=False)
    except (ValueError, RuntimeError) as e:
        raise QuantconvError(f"stock llama.cpp refused {path}: {e}") from None


@dataclass
class Perplexity:
    ppl: float
    tokens: int        # scored tokens
    windows: int


def tokenize(model, text: str) -> list[int]:
    return model.tokenize(text.encode("utf-8"), add_bos=False, special=False)


def perplexity(path: str, text: str, ctx: int = 512, windows: int = 40, threads: int = 2) -> Perplexity:
    model = load(path, ctx=ctx, threads=threads, logits_all=True)
    ids = tokenize(model, text)
    n = min(windows, len(ids) // ctx)
    if n == 0:
        raise QuantconvError(f"the text has {len(ids)} tokens, fewer than one window of {ctx}")
    nll, count = 0.0, 0
    for w in range(n):
        window = ids[w * ctx:(w + 1) * ctx]
        model.reset()
        model.eval(window)
        logits = np.asarray(model.scores[:ctx], dtype=np.float64)      # (ctx, vocab)
        logits -= logits.max(axis=1, keepdims=True)
        logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
        targets = np.asarray(window[1:])
        nll -= float(logp[np.arange(ctx - 1), targets].sum())
        count += ctx - 1
    return Perplexity(math.exp(nll / count), count, n)


def generate(path: str, prompt: str, n: int = 32, threads: int = 2) -> str:
    model = load(path, ctx=512, threads=threads)
    out = model(prompt, max_tokens=n, temperature=0.0, top_k=1)
    return out["choices"][0]["text"]
