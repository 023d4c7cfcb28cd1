"""The hook contract: what the runner calls after (and during) training, and how outputs are named.

A hook is a function ``hook(model, data, *, device, generator, **settings) -> dict``:

* ``model``: the trained model (EMA weights, eval mode, on ``device``);
* ``data``: the test split, a :class:`hybrids.data.ArrayDataset` (``data.data`` int64 levels
  ``[N, C, H, W]`` with ``data.num_levels`` = K, or float ``[N, 2]`` toy points with
  ``num_levels`` None; ``data.labels``, ``data.name``, ``data.data_dir``);
* ``device``: where to compute; ``generator``: the hook's only source of randomness (a fresh one
  seeded with ``Trainer.seed + 1`` for every call, so every hook is reproducible on its own);
* ``settings``: keyword arguments bound in gin (``hybrid_sampler.t0 = 0.05``).

Two kinds, listed in gin as ``experiment.evaluators`` and ``experiment.samplers``:

* an **evaluator** returns JSON-able values (floats, ints, strings, lists, dicts, tensors), stored in
  ``results.json`` under ``results[<key>]`` and logged to TensorBoard as ``eval/<key>/<path>``;
* a **sampler** returns ``{output: samples}`` with int64 levels ``[N, C, H, W]`` (written as a PNG
  grid) or float points ``[N, 2]`` (a scatter plot), saved as ``samples/<key>_<output>.png``.
  Every sampler takes ``num_samples``, so that another hook (``sample_fd_eval``) can ask it for a
  given number of samples.

The ``<key>`` of a hook (:func:`hook_keys`) is its name, with its gin scope in brackets when it is
referenced through one (``@fd/hybrid_sampler`` -> ``hybrid_sampler[fd]``); a name that repeats
without a scope gets ``_2``, ``_3``, ...

Sizes come from one :class:`Budget`: a hook parameter that is named like a ``Budget`` field and
defaults to None takes the budget's value when nothing else sets it. A preset that binds
``Budget.num_samples = 2`` therefore shrinks every sampler, including one it has never heard of,
while a binding of the hook's own parameter (``hybrid_sampler.num_samples = 64``) still wins.

Decorate a function with :func:`evaluator` or :func:`sampler` to make it a gin-configurable hook
(module ``hybrids.hooks``; ``device`` and ``generator`` cannot be bound), or build a sampler hook
from a plain score-based sampler with :func:`score_sampler_hook`.
"""
from __future__ import annotations

import dataclasses
import functools
import inspect
from typing import Any, Callable, Protocol, Sequence

import gin
import torch
from torch import Tensor, nn

from hybrids.data import ArrayDataset, quantize, to_model_space
from hybrids.sdes import SDE, sde_of
from hybrids.tensors import model_dtype, rand, randn

GIN_MODULE = "hybrids.hooks"
RUNTIME_ARGS = ("device", "generator")


class Hook(Protocol):
    """``hook(model, data, *, device, generator, **settings) -> dict`` (see the module docstring)."""

    __name__: str

    def __call__(self, model: nn.Module, data: ArrayDataset, *, device: torch.device,
                 generator: torch.Generator) -> dict[str, Any]: ...


@gin.configurable(module=GIN_MODULE)
@dataclasses.dataclass(frozen=True)
class Budget:
    """Sizes that every hook reads by default; presets rebind these to scale all hooks at once.

    Defaults are paper scale. A hook reads a field when it has a parameter of the same name whose
    default is None and nothing binds it.

    Attributes:
        num_samples: samples a sampler hook draws for its picture.
        num_quality_samples: samples a sample-quality metric (FD) draws.
        num_examples: test examples an evaluator uses (None: the whole split).
        batch_size: examples per evaluation batch.
        rtol, atol: tolerances of adaptive ODE solvers.
        n_times: time points per example of a Monte Carlo time integral (the DSM bound).
        num_steps: steps of a sampler's discretisation (PC sampler, Langevin chains).
        classifier_steps: training updates of a feature/label classifier (FD, class counts).
        train_steps: training updates of an auxiliary model a hook fits (a dequantizer).
    """

    num_samples: int = 64
    num_quality_samples: int = 10_000
    num_examples: int | None = None
    batch_size: int = 64
    rtol: float = 1e-5
    atol: float = 1e-5
    n_times: int = 1000
    num_steps: int = 1000
    classifier_steps: int = 500
    train_steps: int = 200


BUDGET_FIELDS = tuple(f.name for f in dataclasses.fields(Budget))


def _budgeted(fn: Callable) -> Callable:
    """Wrap ``fn`` so that its budget-named parameters left at None take the :class:`Budget`'s values."""
    signature = inspect.signature(fn)
    names = [n for n, p in signature.parameters.items() if n in BUDGET_FIELDS and p.default is None]
    if not names:
        return fn

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        missing = [n for n in names if bound.arguments.get(n) is None]
        if missing:
            budget = Budget()
            for name in missing:
                bound.arguments[name] = getattr(budget, name)
        return fn(*bound.args, **bound.kwargs)

    return wrapper


def _check_signature(fn: Callable) -> None:
    params = inspect.signature(fn).parameters
    for name in RUNTIME_ARGS:
        if name not in params or params[name].kind is not inspect.Parameter.KEYWORD_ONLY:
            raise TypeError(
                f"hook {fn.__name__} must take keyword-only `{name}`: "
                "def hook(model, data, *, device, generator, ...)."
            )


def _register(fn: Callable, kind: str) -> Callable:
    _check_signature(fn)
    hook = gin.configurable(fn.__name__, module=GIN_MODULE, denylist=list(RUNTIME_ARGS))(_budgeted(fn))
    hook.hook_kind = kind
    return hook


def evaluator(fn: Callable) -> Callable:
    """Make ``fn(model, data, *, device, generator, ...) -> dict`` a gin-configurable evaluator."""
    return _register(fn, "evaluator")


def sampler(fn: Callable) -> Callable:
    """Make ``fn(model, data, *, device, generator, num_samples=None, ...) -> {output: samples}``
    a gin-configurable sampler hook."""
    if "num_samples" not in inspect.signature(fn).parameters:
        raise TypeError(f"sampler hook {fn.__name__} must take `num_samples` (see hybrids.hooks.base).")
    return _register(fn, "sampler")


# --- outputs and their names --------------------------------------------------------------------
def samples_output(x: Tensor, num_levels: int | None, hook: str = "sampler") -> Tensor:
    """A sampler's samples as the runner stores them, on the CPU: model-space images
    ``[N, C, H, W]`` become int64 levels (``quantize``, values outside [-1, 1] go to the end
    levels); continuous data (``num_levels`` None) stay float; integer levels pass through.

    Raises:
        FloatingPointError: for non-finite samples (a diverged sampler), naming ``hook``.
    """
    x = x.detach().cpu()
    if not x.is_floating_point():
        return x
    bad = ~torch.isfinite(x.flatten(1)).all(1) if x.ndim > 1 else ~torch.isfinite(x)
    if bool(bad.any()):
        raise FloatingPointError(
            f"{hook} produced non-finite values in {int(bad.sum())} of {x.shape[0]} samples; lower its "
            "step size or raise its number of steps (or check the model's score for NaNs).")
    return x if num_levels is None else quantize(x, num_levels)


def model_space_examples(model: nn.Module, data: ArrayDataset, num_examples: int | None,
                  generator: torch.Generator) -> Tensor:
    """The first ``num_examples`` examples of ``data`` in model space, in the model's dtype, on the CPU:
    integer levels uniformly dequantized with ``generator``, float data cast."""
    dtype = model_dtype(model)
    return to_model_space(data.data[:num_examples], data.num_levels, generator, dtype).to(dtype)


def hook_scope(hook: Callable) -> str | None:
    """The gin scope a hook was referenced through (``@fd/name`` -> ``'fd'``), or None."""
    try:
        scope = inspect.getclosurevars(hook).nonlocals.get("scope_components")
    except TypeError:  # builtins and callable objects have no closure to read
        return None
    return "/".join(scope) if scope else None


def hook_keys(hooks: Sequence[Callable]) -> list[str]:
    """Result keys of hooks: ``name`` or ``name[scope]``; a repeated key gets ``_2``, ``_3``, ..."""
    keys: list[str] = []
    for hook in hooks:
        name = getattr(hook, "__name__", type(hook).__name__)
        scope = hook_scope(hook)
        base = f"{name}[{scope}]" if scope else name
        key, i = base, 1
        while key in keys:
            i += 1
            key = f"{base}_{i}"
        keys.append(key)
    return keys


def hook_label(hook: Callable) -> str:
    """A hook's key on its own (for hooks that report which other hook they called)."""
    return hook_keys([hook])[0]


# --- sampler hooks from plain sampling functions -------------------------------------------------
SHAPE_SAMPLER_RUNTIME = ("model", "shape", "sde", "num_levels", "generator", "device", "dtype")


def _settings(fn: Callable, runtime: Sequence[str]) -> list[inspect.Parameter]:
    """``fn``'s keyword parameters with defaults, minus the runtime ones, as keyword-only."""
    return [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for n, p in inspect.signature(fn).parameters.items()
            if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is not p.empty
            and n not in runtime]


def shape_sampler_hook(fn: Callable[..., Tensor], *, name: str) -> Callable:
    """Turn a model sampler ``fn(model, shape, *, generator, **settings) -> samples`` into a
    gin-configurable sampler hook (``hybrids.samplers.ancestral_sample``,
    ``hybrids.samplers.hybrid.hybrid_sample``).

    The hook ``hook(model, data, *, device, generator, num_samples=None[, sde=None], **settings)``
    calls ``fn(model, shape=(num_samples, *data.shape), generator=generator, **settings)``, adding
    ``sde`` (the model's, or the bound one), ``num_levels`` (the data's; integer images are then
    required) and ``device`` when ``fn`` takes them, and returns
    ``{'samples': samples_output(samples, data.num_levels)}``. Gin sees ``fn``'s other keyword
    parameters as the hook's own.

    Args:
        fn: the sampler.
        name: the hook's gin name.
    """
    params = inspect.signature(fn).parameters
    takes = {n for n in ("sde", "num_levels", "device") if n in params}

    def hook(model: nn.Module, data: ArrayDataset, *, device: torch.device, generator: torch.Generator,
             num_samples: int | None = None, sde: SDE | None = None, **kwargs: Any) -> dict[str, Tensor]:
        if "num_levels" in takes:
            if data.num_levels is None or data.data.ndim != 4:
                raise ValueError(f"{name} needs integer images [N, C, H, W] with num_levels; got {data.name} with "
                                 f"shape {tuple(data.data.shape)} and num_levels={data.num_levels}.")
            kwargs["num_levels"] = int(data.num_levels)
        if "sde" in takes:
            kwargs["sde"] = sde_of(model, sde, binding=f"{name}.sde")
        if "device" in takes:
            kwargs["device"] = device
        x = fn(model, shape=(int(num_samples),) + tuple(data.shape), generator=generator, **kwargs)
        return {"samples": samples_output(x, data.num_levels, name)}

    head = list(inspect.signature(hook).parameters.values())[:6]
    if "sde" not in takes:
        head = head[:5]
    hook.__name__ = hook.__qualname__ = name
    hook.__module__ = fn.__module__
    hook.__doc__ = (f"Sampler hook of ``{fn.__module__}.{fn.__name__}`` (built by "
                    "``hybrids.hooks.base.shape_sampler_hook``).\n\n" + (fn.__doc__ or ""))
    hook.__signature__ = inspect.Signature(head + _settings(fn, SHAPE_SAMPLER_RUNTIME))
    return sampler(hook)


# --- score-based sampler hooks from plain functions ---------------------------------------------
SCORE_SAMPLER_INITS = ("prior", "normal", "uniform")


def score_sampler_hook(
    fn: Callable[..., Tensor],
    *,
    name: str | None = None,
    output: str = "samples",
    init: str = "prior",
) -> Callable:
    """Turn a plain sampler ``fn(score_fn, sde, x_init, *, generator, **settings) -> x`` into a
    gin-configurable sampler hook.

    The hook ``hook(model, data, *, device, generator, num_samples=None, sde=None, **settings)``
    draws ``x_init`` ``[num_samples, *data.shape]`` in the model's dtype (``init``: the SDE's prior
    ``'prior'``, N(0, I) ``'normal'`` or U[-1, 1] ``'uniform'``), calls ``fn`` under
    ``torch.no_grad()`` with ``model.score`` and the model's SDE (``sde`` binds another one), and
    returns ``{output: samples_output(x, data.num_levels)}``. Gin sees ``fn``'s keyword
    parameters as the hook's own (``<name>.n_steps = 10``); ``num_samples`` comes from the
    :class:`Budget` unless bound.

    Args:
        fn: the sampler; it must take ``generator`` as a keyword.
        name: the hook's gin name (default ``fn.__name__ + '_sampler'``).
        output: the key of the samples in the hook's output.
        init: how ``x_init`` is drawn (see above).

    Returns:
        The registered hook.
    """
    if init not in SCORE_SAMPLER_INITS:
        raise ValueError(f"unknown init {init!r}; choose one of {SCORE_SAMPLER_INITS}.")
    if "generator" not in inspect.signature(fn).parameters:
        raise TypeError(f"{fn.__name__} must take `generator` as a keyword argument.")
    settings = _settings(fn, ("generator", "num_samples", "sde", "device"))

    def hook(model: nn.Module, data: ArrayDataset, *, device: torch.device, generator: torch.Generator,
             num_samples: int | None = None, sde: SDE | None = None, **kwargs: Any) -> dict[str, Tensor]:
        the_sde = sde_of(model, sde, binding=f"{hook.__name__}.sde")
        shape = (int(num_samples),) + tuple(data.shape)
        dtype = model_dtype(model)
        if init == "prior":
            x_init = the_sde.prior_sample(shape, generator, dtype=dtype, device=generator.device).to(device)
        elif init == "normal":
            x_init = randn(shape, generator, dtype=dtype, device=device)
        else:
            x_init = 2 * rand(shape, generator, dtype=dtype, device=device) - 1
        with torch.no_grad():
            x = fn(model.score, the_sde, x_init, generator=generator, **kwargs)
        return {output: samples_output(x, data.num_levels, hook.__name__)}

    hook.__name__ = hook.__qualname__ = name or f"{fn.__name__}_sampler"
    hook.__module__ = fn.__module__
    hook.__doc__ = (f"Sampler hook of ``{fn.__module__}.{fn.__name__}`` "
                    "(built by ``hybrids.hooks.base.score_sampler_hook``).\n\n" + (fn.__doc__ or ""))
    head = list(inspect.signature(hook).parameters.values())[:6]  # model ... sde
    hook.__signature__ = inspect.Signature(head + settings)
    return sampler(hook)
