"""Stock llama.cpp (through llama-cpp-python) as a peer: load a GGUF, generate, score perplexity.

Perplexity protocol (the same as `quantconv eval`): tokenize the whole text without BOS, cut it into
consecutive windows of `ctx` tokens, score every position after the first of each window, and report
exp(mean NLL). llama-perplexity's own protocol (BOS, second half only) differs; compare like with like.
"""
from __future__ import annotations

import numpy as np

from quantconv.errors import QuantconvError
from quantconv.runtime.perplexity import PerplexityResult, perplexity as runtime_perplexity


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


def tokenize(model, text: str) -> list[int]:
    return model.tokenize(text.encode("utf-8"), add_bos=False, special=False)


class Scorer:
    """A llama.cpp model behind runtime.perplexity's interface (reset, eval with every position's logits)."""

    def __init__(self, model):
        self.model = model

    def reset(self) -> None:
        self.model.reset()

    def eval(self, tokens, all_logits: bool = True) -> np.ndarray:
        tokens = [int(t) for t in tokens]
        self.model.eval(tokens)
        return np.asarray(self.model.scores[:len(tokens)])


def perplexity(path: str, text: str, ctx: int = 512, windows: int = 40, threads: int = 2) -> PerplexityResult:
    """Our protocol on llama.cpp's logits, with llama.cpp's own tokenizer."""
    model = load(path, ctx=ctx, threads=threads, logits_all=True)
    return runtime_perplexity(Scorer(model), tokenize(model, text), ctx, windows)


def generate(path: str, prompt: str, n: int = 32, threads: int = 2) -> str:
    model = load(path, ctx=512, threads=threads)
    out = model(prompt, max_tokens=n, temperature=0.0, top_k=1)
    return out["choices"][0]["text"]
