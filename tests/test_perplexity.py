"""runtime.perplexity: the one scoring function behind `eval`, sweep, the ONNX runner and the llama.cpp peer."""
import math

import numpy as np
import pytest

from quantconv.errors import QuantconvError
from quantconv.runtime.perplexity import perplexity, text_ids


class Fake:
    """Logits that put probability p on the next id of a known sequence and spread the rest evenly."""

    def __init__(self, vocab: int, p: float, seq):
        self.vocab, self.p, self.seq, self.resets, self.pos = vocab, p, list(seq), 0, 0

    def reset(self):
        self.resets += 1
        self.pos = 0

    def eval(self, ids, all_logits=True):
        assert all_logits and self.pos == 0, "each window is scored from an empty context"
        rest = (1 - self.p) / (self.vocab - 1)
        logits = np.full((len(ids), self.vocab), math.log(rest), dtype=np.float32)
        for i, t in enumerate(ids[1:]):
            logits[i, t] = math.log(self.p)
        self.pos += len(ids)
        return logits


def test_windows_are_scored_after_their_first_position():
    ids = np.random.default_rng(0).integers(0, 50, 1000)
    model = Fake(50, 0.25, ids)
    r = perplexity(model, ids, ctx=100, windows=7)
    assert (r.windows, r.tokens, model.resets) == (7, 7 * 99, 7)
    assert r.ppl == pytest.approx(4.0, rel=1e-5)
    assert perplexity(Fake(50, 0.5, ids), ids, ctx=100).windows == 10   # every whole window by default


def test_too_short_text_and_tiny_ctx_are_errors():
    with pytest.raises(QuantconvError, match="fewer than one window"):
        perplexity(Fake(10, 0.5, range(5)), list(range(5)), ctx=8)
    with pytest.raises(QuantconvError, match="--ctx must be at least 2"):
        perplexity(Fake(10, 0.5, range(5)), list(range(5)), ctx=1)


def test_text_ids_never_add_bos(tmp_path):
    class Tok:
        def encode(self, text, add_bos=True):
            return ([1] if add_bos else []) + [ord(c) for c in text]

    (tmp_path / "t.txt").write_text("ab")
    assert text_ids(Tok(), tmp_path / "t.txt") == [97, 98]
    with pytest.raises(QuantconvError, match="no such file"):
        text_ids(Tok(), tmp_path / "missing.txt")
