"""Perplexity with the quantconv engine, on the protocol every quantconv number uses: tokenize the whole
text without BOS, cut it into consecutive windows of `ctx` tokens, score every position after the first
of each window, ppl = exp(mean NLL). The llama.cpp peer (peer_llama_cpp.perplexity) follows the same."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from quantconv.errors import QuantconvError


@dataclass
class PerplexityResult:
    ppl: float
    tokens: int      # scored positions
    windows: int
    ctx: int

    def as_dict(self) -> dict:
        return {"ppl": self.ppl, "tokens": self.tokens, "windows": self.windows, "ctx": self.ctx}


def window_nll(logits: np.ndarray, targets: np.ndarray) -> float:
    """Sum of -log p(target) over rows of logits (float64 log-softmax for a stable sum)."""
    z = logits.astype(np.float64)
    z -= z.max(axis=1, keepdims=True)
    logp = z[np.arange(len(targets)), targets] - np.log(np.exp(z).sum(axis=1))
    return float(-logp.sum())


def perplexity(score_window: Callable[[Sequence[int]], np.ndarray], ids: Sequence[int], ctx: int = 512,
               windows: int | None = None, progress: Callable[[int, int], None] | None = None) -> PerplexityResult:
    """score_window(tokens) -> (len(tokens), vocab) logits from an empty context."""
    if ctx < 2:
        raise QuantconvError(f"--ctx must be at least 2 (got {ctx})")
    available = len(ids) // ctx
    n = available if windows is None else min(windows, available)
    if n == 0:
        raise QuantconvError(f"the text has {len(ids)} tokens, fewer than one window of {ctx}; use a longer "
                             "text or a smaller --ctx")
    nll, count = 0.0, 0
    for w in range(n):
        window = list(ids[w * ctx:(w + 1) * ctx])
        logits = score_window(window)
        nll += window_nll(logits[:-1], np.asarray(window[1:]))
        count += ctx - 1
        if progress:
            progress(w + 1, n)
    return PerplexityResult(math.exp(nll / count), count, n, ctx)
