"""The calibration algorithms by name (`--algo awq+gptq`, `--norm-tweak`): each registers a config (its
own options and their defaults), one step on a decoder layer, and what it records in the file's recipe.

The layer loop (calibrate._process_layer) runs the chosen algorithms' steps by stage:
  smooth  step(cfg, ctx): changes the layer's float weights before rounding (SmoothQuant, AWQ);
  round   step(cfg, layer, groups, hessian, dtypes) -> one list of QuantizedLinear per group: rounds
          the linears that share one input, grouped by datatype (GPTQ; RTN when no round step is chosen);
  tweak   step(cfg, ctx, out) -> out: after the whole layer is quantized (Norm Tweaking).
ctx is a calibrate.LayerContext. Adding an algorithm: a config dataclass, a step, one @register.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Callable

import torch

from quantconv.convert import awq, smoothing
from quantconv.convert.gptq import QuantizedLinear, gptq, inverse_cholesky, prepare_hessian, rtn, split_rows
from quantconv.convert.norm_tweak import tweak
from quantconv.errors import QuantconvError

STAGES = ("smooth", "round", "tweak")


@dataclass(frozen=True)
class Algorithm:
    name: str
    config: type                                   # its options: a dataclass, defaults = the CLI's
    stage: str                                     # one of STAGES
    step: Callable
    recipe: Callable[[Any], dict]                  # quantconv.recipe.* entries when chosen
    recipe_off: dict = field(default_factory=dict)  # ... and when not (files always record norm_tweak)
    flag: bool = False          # chosen by its own option (--norm-tweak, norm_tweak=True), not in --algo
    calibrates: bool = True     # False: runs without calibration text (rtn)
    float_output: bool = False  # tweak: needs the float layer's output, taken before any step runs


# Registration order is the order the steps of one stage run in and the recipe keys are written in.
REGISTRY: dict[str, Algorithm] = {}


def register(name: str, config: type, stage: str, recipe: Callable[[Any], dict] = lambda cfg: {}, **kw):
    """Decorator: register `step` as algorithm `name` with options `config`."""
    assert stage in STAGES and name not in REGISTRY

    def add(step: Callable) -> Callable:
        REGISTRY[name] = Algorithm(name, config, stage, step, recipe, **kw)
        return step
    return add


def algorithm_of(cfg) -> Algorithm:
    """The registered algorithm whose config `cfg` is."""
    for a in REGISTRY.values():
        if type(cfg) is a.config:
            return a
    raise TypeError(f"{type(cfg).__name__} is not the config of a registered calibration algorithm")


# --- rounding -------------------------------------------------------------------------------------------

@dataclass
class RTN:
    """Round to nearest: nothing to set."""


@dataclass
class GPTQ:
    act_order: bool = False      # columns in decreasing Hessian-diagonal order (static groups)
    scale_search: bool = False   # codebook group scales by diag(H)-weighted error search
    damp: float = 0.01           # fraction of the mean Hessian diagonal


@register("rtn", RTN, "round", calibrates=False)
def _rtn(cfg: RTN, layer, groups, hessian, dtypes) -> list[list[QuantizedLinear]]:
    return [[rtn(layer.w[n], dtypes[n]) for n in members] for members in groups]


@register("gptq", GPTQ, "round", recipe=lambda c: {"act_order": int(c.act_order), "scale_search": int(c.scale_search)})
def _gptq(cfg: GPTQ, layer, groups, hessian, dtypes) -> list[list[QuantizedLinear]]:
    H = hessian()
    names = "/".join(n for members in groups for n in members)
    # one inverse Cholesky for all linears of this input (act-order permutes H per linear: not then)
    factor = None if cfg.act_order else inverse_cholesky(prepare_hessian(H)[0], cfg.damp, f"layer {layer.i} {names}")
    out = []
    for members in groups:   # one pass per datatype, the rows of its linears concatenated
        W = torch.cat([layer.w[n] for n in members]) if len(members) > 1 else layer.w[members[0]]
        joint = gptq(W, H, dtypes[members[0]], percdamp=cfg.damp, act_order=cfg.act_order, hinv_factor=factor,
                     name=f"layer {layer.i} " + "/".join(members),
                     scale_search=cfg.scale_search)
        out.append(split_rows(joint, [layer.w[n].shape[0] for n in members]))
    return out


# --- smoothing (before rounding) -----------------------------------------------------------------------

@dataclass
class SmoothQuant:
    alpha: float = 0.5           # migration strength


@dataclass
class AWQ:
    grid: int = 20               # alpha grid points of the scale search


@register("smoothquant", SmoothQuant, "smooth", recipe=lambda c: {"alpha": c.alpha})
def _smoothquant(cfg: SmoothQuant, ctx) -> None:
    inputs = ctx.inputs()
    alphas = {}
    for prev, linears in smoothing.mappings(ctx.layer):
        absmax = inputs[linears[0]]().abs().amax(0)
        s = smoothing.smoothquant_scales(absmax, [ctx.layer.w[n] for n in linears], cfg.alpha)
        smoothing.fold(ctx.layer, prev, linears, s)
        alphas[prev] = cfg.alpha
    ctx.info["smoothquant"] = alphas


@register("awq", AWQ, "smooth")
def _awq(cfg: AWQ, ctx) -> None:
    sub = {k: (lambda f=f: awq.subsample(f(), 4096)) for k, f in ctx.inputs().items()}
    ctx.info["awq_alpha"] = awq.apply_awq_scales(ctx.layer, sub, ctx.dtypes, cfg.grid)
    awq.clip_weights(ctx.layer, ctx.inputs(), ctx.dtypes)   # on the inputs of the scaled layer


# --- after rounding ------------------------------------------------------------------------------------

@dataclass
class NormTweak:
    lr: float = 1e-5             # base learning rate (scaled up for later layers)


@register("norm_tweak", NormTweak, "tweak", recipe=lambda c: {"norm_tweak": 1}, recipe_off={"norm_tweak": 0},
          flag=True, float_output=True)
def _norm_tweak(cfg: NormTweak, ctx, out: torch.Tensor) -> torch.Tensor:
    with torch.enable_grad():
        before, after = tweak(ctx.layer, ctx.X, ctx.float_out, ctx.rope, lambda l, x, r: l.forward(x, r), lr=cfg.lr,
                              n_layers=ctx.n_layers, chunk=max(1, ctx.opts.chunk // 2))
    ctx.info["norm_tweak_loss"] = (round(before, 6), round(after, 6))
    return ctx.forward() if after < before else out


# --- choosing -----------------------------------------------------------------------------------------

def _one_rounding(names) -> None:
    rounding = sorted({n for n in names if REGISTRY[n].stage == "round"})
    if len(rounding) > 1:
        raise QuantconvError(f"--algo cannot combine {' and '.join(rounding)}: each rounds the weights; pick one")


def parse_algo(algo: str) -> tuple[str, ...]:
    """'awq+gptq' -> ('awq', 'gptq'); validated against the registry."""
    parts = tuple(p.strip().lower() for p in algo.split("+") if p.strip())
    named = [n for n, a in REGISTRY.items() if not a.flag]
    bad = [p for p in parts if p not in named]
    if not parts or bad:
        flags = "".join(f"; {n}: --{n.replace('_', '-')}" for n in bad if n in REGISTRY)
        raise QuantconvError(f"unknown --algo '{algo}'; use {', '.join(named)} or a '+' combination such as "
                             f"awq+gptq or smoothquant+gptq{flags}")
    _one_rounding(parts)
    return parts


def configs(algo: str, **options) -> tuple:
    """The configs of the algorithms `algo` names ('awq+gptq') and of the flag ones whose option is true
    (norm_tweak=True); each takes the options among its fields, the others ignore them (the CLI passes
    all of its flags)."""
    known = {f.name for a in REGISTRY.values() for f in fields(a.config)} | {n for n, a in REGISTRY.items() if a.flag}
    if set(options) - known:
        raise TypeError(f"no calibration algorithm has the options {sorted(set(options) - known)}")
    names = parse_algo(algo) + tuple(n for n, a in REGISTRY.items() if a.flag and options.get(n))
    out = []
    for n in names:
        own = {f.name for f in fields(REGISTRY[n].config)}
        out.append(REGISTRY[n].config(**{k: v for k, v in options.items() if k in own}))
    return tuple(out)


def with_algo(chosen: tuple, algos: tuple[str, ...]) -> tuple:
    """`chosen` configs completed with a default config for each of `algos` (parse_algo) it lacks; a
    config of an --algo algorithm that `algos` does not name is refused (the recipe would not say)."""
    have = {algorithm_of(c).name: c for c in chosen}
    stray = [n for n in have if n not in algos and not REGISTRY[n].flag]
    if stray:
        raise QuantconvError(f"the calibration options configure {', '.join(stray)}, which --algo "
                             f"{'+'.join(algos)} does not name")
    return (tuple(have[n] if n in have else REGISTRY[n].config() for n in algos)
            + tuple(c for n, c in have.items() if REGISTRY[n].flag))


def by_stage(chosen: tuple) -> dict[str, list[tuple[Algorithm, Any]]]:
    """stage -> [(algorithm, config)] of the chosen configs, in registration order; RTN rounds when no
    rounding algorithm is chosen."""
    cfgs = {algorithm_of(c).name: c for c in chosen}
    _one_rounding(cfgs)
    steps = {s: [(a, cfgs[n]) for n, a in REGISTRY.items() if n in cfgs and a.stage == s] for s in STAGES}
    steps["round"] = steps["round"] or [(REGISTRY["rtn"], RTN())]
    return steps


def recipe(chosen: tuple) -> dict:
    """The chosen configs' quantconv.recipe.* entries, in registration order."""
    cfgs = {algorithm_of(c).name: c for c in chosen}
    out: dict = {}
    for n, a in REGISTRY.items():
        out.update(a.recipe(cfgs[n]) if n in cfgs else a.recipe_off)
    return out
