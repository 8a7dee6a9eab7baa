"""Prefill and decode speed (tokens/s) of the quantconv engine, optionally interleaved with stock
llama.cpp on a GGUF file in the same run so that ratios compare like with like on a noisy machine."""
from __future__ import annotations

import os
import platform
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np


def machine_description() -> str:
    """'Intel(R) Xeon(R) Processor, 2 cores, AVX-512': what a result table names its machine by."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    model = value.strip()
                elif key.strip() in ("flags", "Features"):
                    flags = set(value.split())
    except OSError:
        pass
    isa = next((name for flag, name in (("avx512f", "AVX-512"), ("avx2", "AVX2"), ("asimd", "NEON"))
                if flag in flags), platform.machine())
    return f"{model}, {os.cpu_count()} cores, {isa}"


@dataclass
class Speed:
    prefill_tok_s: float
    decode_tok_s: float
    runs: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"prefill_tok_s": self.prefill_tok_s, "decode_tok_s": self.decode_tok_s}


class Runner:
    """What a benchmark needs from an engine: reset, eval a batch, eval one token."""

    def __init__(self, reset: Callable[[], None], eval_tokens: Callable[[list[int]], None]):
        self.reset, self.eval = reset, eval_tokens


def engine_runner(engine) -> Runner:
    return Runner(engine.reset, lambda toks: engine.eval(np.asarray(toks, dtype=np.int32)))


def llama_cpp_runner(model) -> Runner:
    def eval_tokens(toks):
        model.eval(toks)
    return Runner(model.reset, eval_tokens)


# The clocks a measurement can use: wall time (what a user waits), or this process's CPU time. On a
# machine shared with other jobs, CPU time at one thread leaves out the time the thread was preempted
# (it still pays for the caches and memory bandwidth the others take); with several threads it would
# also count their spinning, so it only means something at --threads 1.
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def time_prefill(r: Runner, tokens: list[int], clock: Callable[[], float] = time.perf_counter) -> float:
    r.reset()
    t = clock()
    r.eval(tokens)
    return len(tokens) / (clock() - t)


def time_decode(r: Runner, prompt: list[int], gen: int, vocab: int,
                clock: Callable[[], float] = time.perf_counter) -> float:
    r.reset()
    r.eval(prompt)
    rng = np.random.default_rng(0)
    steps = [int(t) for t in rng.integers(100, min(vocab, 20000), size=gen)]
    t = clock()
    for tok in steps:   # the token fed back does not change the cost of a step
        r.eval([tok])
    return gen / (clock() - t)


def measure(runners: dict[str, Runner], vocab: int, prompt: int = 512, gen: int = 64, reps: int = 3,
            progress: Callable[[str], None] | None = None, clock: str = "wall") -> dict[str, Speed]:
    """Interleaves the runners rep by rep (A, B, A, B, ...) and reports each one's median (`clock`: a
    key of CLOCKS)."""
    tick = CLOCKS[clock]
    rng = np.random.default_rng(1)
    prompt_tokens = [int(t) for t in rng.integers(100, min(vocab, 20000), size=prompt)]
    short = prompt_tokens[:16]
    samples = {name: {"prefill": [], "decode": []} for name in runners}
    for rep in range(reps + 1):            # rep 0 warms caches and page-ins, not counted
        for name, r in runners.items():
            p = time_prefill(r, prompt_tokens, tick)
            d = time_decode(r, short, gen, vocab, tick)
            if rep:
                samples[name]["prefill"].append(p)
                samples[name]["decode"].append(d)
            if progress:
                progress(f"{name} rep {rep}/{reps}: prefill {p:.0f} tok/s, decode {d:.1f} tok/s")
    return {name: Speed(statistics.median(s["prefill"]), statistics.median(s["decode"]), s)
            for name, s in samples.items()}
