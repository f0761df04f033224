"""Component parameters of a config (``model``, ``loss``, ``miner``, ``sampler``) checked
against the type hints of the registered class's constructor."""

from __future__ import annotations

from typing import Any


def check_param_types(section: str, spec: dict[str, Any], cls: type) -> None:
    """Values of a component's parameters against its constructor's type hints, so that
    ``model.dim: 32.5`` is an error naming the key, not one from deep inside torch.

    A string that reads as a number where the hint takes one (YAML reads ``5e-1`` as a
    string) is replaced in ``spec`` by that number (:func:`number_value`), as the fixed
    sections' fields are (:func:`~dmlkit.config.field_rules.coerce_scalar`)."""
    import typing

    try:
        hints = typing.get_type_hints(cls.__init__)
    except Exception:  # noqa: BLE001 - hints that do not resolve: nothing to check
        return
    for key, value in list(spec.items()):
        hint = hints.get(key)
        if key == "name" or hint is None or matches(value, hint):
            continue
        number = number_value(value, hint)
        if number is not None:
            spec[key] = number
            continue
        wanted = str(hint).replace("collections.abc.", "").replace("typing.", "")
        wanted = wanted.replace("<class '", "").replace("'>", "").replace("NoneType", "None")
        raise ValueError(f"{section}.{key} must be {wanted}, got {value!r} "
                         f"({type(value).__name__}) in {section} {spec['name']!r}")


def number_value(value: Any, hint: Any) -> int | float | None:
    """``value``, a string, as the number ``hint`` takes: ``float('5e-1')`` where it takes
    a float, ``int('16')`` where it takes an int (as ``coerce_scalar`` reads an int field:
    ``'1.5'`` and ``'1e1'`` are no int); ``None`` when it is no such string."""
    import types
    import typing

    if not isinstance(value, str):
        return None
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        hints = typing.get_args(hint)
    else:
        hints = (hint,)
    for kind in (int, float):  # (an int where both are taken: '16' stays whole)
        if kind in hints:
            try:
                return kind(value.strip())
            except ValueError:
                continue
    return None


def matches(value: Any, hint: Any) -> bool:
    """Whether a config value can be ``hint``; lenient for anything not plain data."""
    import collections.abc as abc
    import types
    import typing

    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(matches(value, a) for a in args)
    if origin is typing.Literal:
        return value in args
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin in (list, tuple, abc.Sequence) and args:
        if not isinstance(value, (list, tuple)):
            return False
        if origin is tuple and args[-1] is not Ellipsis:
            return len(value) == len(args) and all(map(matches, value, args))
        return all(matches(v, args[0]) for v in value)
    if origin in (dict, abc.Mapping) and len(args) == 2:
        return isinstance(value, dict) and all(matches(v, args[1]) for v in value.values())
    return True  # a class (a distance, a module, an array): built or checked elsewhere


__all__ = ["check_param_types", "matches", "number_value"]
