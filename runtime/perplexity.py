"""Perplexity with the quantconv engine, on the protocol every quantconv number uses: tokenize the whole
text without BOS, cut it into consecutive windows of `ctx` tokens, score every position after the first
of each window, ppl = exp(mean NLL). The llama.cpp peer (peer_llama_cpp.perplexity) follows the same."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
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


def text_ids(tokenizer, path) -> list[int]:
    """The protocol's token ids: the whole text file tokenized without BOS."""
    path = Path(path)
    if not path.is_file():
        raise QuantconvError(f"--text {path}: no such file; pass a UTF-8 text file")
    return tokenizer.encode(path.read_text(encoding="utf-8", errors="replace"), add_bos=False)


def perplexity(model, ids: Sequence[int], ctx: int = 512, windows: int | None = None,
               progress: Callable[[int, int], None] | None = None) -> PerplexityResult:
    """`model`: anything with reset() and eval(ids, all_logits=True) -> (len(ids), vocab) logits, e.g.
    runtime.engine.Engine, runtime.onnx_runner.OnnxEngine, runtime.peer_llama_cpp.Scorer."""
    if ctx < 2:
        raise QuantconvError(f"--ctx must be at least 2 (got {ctx})")
    available = len(ids) // ctx
    n = available if windows is None else min(windows, available)
    if n == 0:
        raise QuantconvError(f"the text has {len(ids)} tokens, fewer than one window of {ctx}; use a longer "
                             "text or a smaller --ctx")
    nll, count = 0.0, 0
    for w in range(n):
        window = np.asarray(ids[w * ctx:(w + 1) * ctx], dtype=np.int32)
        model.reset()
        logits = model.eval(window, all_logits=True)
        nll += window_nll(logits[:-1], window[1:])
        count += ctx - 1
        if progress:
            progress(w + 1, n)
    return PerplexityResult(math.exp(nll / count), count, n, ctx)
