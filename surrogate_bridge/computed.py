"""Weights a layer computes at each forward (torch's parametrizations: spectral and weight norm,
orthogonal, ...; pruning masks), made plain properties of the surrogate's private copy.

torch computes them in two ways the copy cannot keep as they are:

- a parametrized module's class is made on the fly and refuses pickling, so a surrogate holding
  one could go neither to a process pool nor to a dask worker;
- a pruning mask is applied by a forward pre-hook that assigns the pruned tensor as a plain
  attribute, which torch.export refuses: such a model had no numpy or CasADi route and could not
  be saved.

Here each such module's class becomes a subclass of its own class whose properties compute the
same tensors by the same calls (``parametrizations[name]()``; the pruning method's
``apply_mask``), from the same parameters and buffers: the state dict's keys, which
``update_weights`` loads, are unchanged, and the class pickles by naming its base class
(``weight_norm``'s hook that reads old state dicts is a local function: it becomes an object).
"""

from __future__ import annotations

from torch import nn
from torch.nn.utils import parametrize, prune

__all__ = ["plain_computed_weights"]

_CLASSES: dict[tuple, type] = {}


class _Computed:
    """Mixin of the classes made here: pickled (and deep-copied) as its base class, the names
    it computes and the module's state."""

    _computed: tuple = ()  # (base class, parametrized names, pruned names)

    def __reduce_ex__(self, protocol):
        return _new, self._computed, self.__getstate__()


def _new(base: type, parametrized: tuple[str, ...], pruned: tuple[str, ...]) -> nn.Module:
    cls = _computed_class(base, parametrized, pruned)
    return cls.__new__(cls)


def _parametrized(name: str) -> property:
    return property(lambda self: self.parametrizations[name](), doc=f"parametrized {name}")


def _pruned(name: str) -> property:
    return property(lambda self: self._pruning[name].apply_mask(self), doc=f"pruned {name}")


def _computed_class(base: type, parametrized: tuple[str, ...], pruned: tuple[str, ...]) -> type:
    key = (base, parametrized, pruned)
    if key not in _CLASSES:
        props = {n: _parametrized(n) for n in parametrized} | {n: _pruned(n) for n in pruned}
        _CLASSES[key] = type(
            f"Computed{base.__name__}", (_Computed, base), {"_computed": key, **props}
        )
    return _CLASSES[key]


class _WeightNormKeys:
    """torch's ``weight_norm`` hook (a local function, which cannot be pickled) that loads a
    state dict of the old ``nn.utils.weight_norm``'s keys (``weight_g``, ``weight_v``)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __call__(self, state_dict, prefix, *_) -> None:
        g, v = f"{prefix}{self.name}_g", f"{prefix}{self.name}_v"
        if g in state_dict and v in state_dict:
            state_dict[f"{prefix}parametrizations.{self.name}.original0"] = state_dict.pop(g)
            state_dict[f"{prefix}parametrizations.{self.name}.original1"] = state_dict.pop(v)


def _picklable_hooks(mod: nn.Module) -> None:
    hooks = mod._load_state_dict_pre_hooks
    for key, hook in list(hooks.items()):
        fn = getattr(hook, "hook", hook)
        if getattr(fn, "__qualname__", "") == "weight_norm.<locals>._weight_norm_compat_hook":
            hooks[key] = _WeightNormKeys(_closed(fn, "name"))


def _closed(fn, var: str):
    """The value ``fn`` closed over as ``var``."""
    return fn.__closure__[fn.__code__.co_freevars.index(var)].cell_contents


def plain_computed_weights(model: nn.Module) -> nn.Module:
    """``model`` (the surrogate's own copy) with its parametrized and pruned modules' classes
    replaced in place as the module docstring says; returned.

    Examples
    --------
    >>> import pickle, torch
    >>> from torch import nn
    >>> layer = nn.utils.parametrizations.weight_norm(nn.Linear(2, 3))
    >>> copy = plain_computed_weights(layer)
    >>> back = pickle.loads(pickle.dumps(copy))
    >>> type(back).__name__, bool(torch.equal(back.weight, layer.weight))
    ('ComputedLinear', True)
    """
    for mod in list(model.modules()):
        if isinstance(mod, _Computed):
            continue
        pruning = {}
        for key, hook in list(mod._forward_pre_hooks.items()):
            if isinstance(hook, prune.BasePruningMethod):  # (one per pruned tensor)
                pruning[hook._tensor_name] = hook
                mod._forward_pre_hooks.pop(key)
                mod._forward_pre_hooks_with_kwargs.pop(key, None)
        names = tuple(mod.parametrizations) if parametrize.is_parametrized(mod) else ()
        if not names and not pruning:
            continue
        base = type(mod).__bases__[0] if names else type(mod)  # (torch's class made on the fly)
        for name in pruning:
            mod.__dict__.pop(name, None)  # the pruned tensor the hook last assigned
        if pruning:
            mod._pruning = pruning
        mod.__class__ = _computed_class(base, names, tuple(pruning))
        _picklable_hooks(mod)
    return model
