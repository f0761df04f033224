"""Name -> class registries for every pluggable family.

The CLI, the config schema and the contract tests are driven from these, so adding a
loss is one file plus one decorator::

    @register_loss("triplet_margin")
    class TripletMarginLoss(BaseMetricLoss): ...

Registries fill when their package is imported; :func:`Registry.get` and
:func:`Registry.names` import the owning package first (and the modules the
``DMLKIT_IMPORTS`` environment variable names), so lookups never miss an entry because
nothing imported it yet. A user's own classes register the same way, in modules a
config lists under ``imports:`` (:mod:`dmlkit.user_modules`); a name is never taken
from another class silently (``replace=True`` replaces it on purpose).
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from dmlkit._suggest import did_you_mean

T = TypeVar("T")


class Registry(Generic[T]):
    """A named collection of classes of one family.

    Parameters
    ----------
    family : str
        Human name used in error messages (``"loss"``).
    package : str
        Package whose import registers every member (``"dmlkit.losses"``).
    """

    def __init__(self, family: str, package: str) -> None:
        self.family = family
        self.package = package
        self._entries: dict[str, type[T]] = {}
        #: names a class of one's own took with replace=True (a built-in registered
        #: after it leaves it there)
        self._replaced: set[str] = set()

    def register(self, name: str, *, replace: bool = False) -> Callable[[type[T]], type[T]]:
        """A class decorator that registers the class under ``name``.

        A name taken by another class (another module's, or a built-in) is refused, so a
        class of your own never replaces one silently; ``replace=True`` replaces it on
        purpose. The same class registered again (its module reloaded) replaces itself.
        """
        if not isinstance(name, str) or not name:
            raise ValueError(f"{self.family} name must be a non-empty string, got {name!r}")

        def decorator(cls: type[T]) -> type[T]:
            builtin = _is_builtin(cls)
            if not builtin:  # the built-ins first, whatever was imported before: a clash
                importlib.import_module(self.package)  # is then always the user's class's
            existing = self._entries.get(name)
            if existing is not None and _where(existing) != _where(cls):
                if builtin and name in self._replaced:  # a class of one's own replaced it
                    return cls  # on purpose: it keeps the name
                if not replace:
                    ours, theirs = (existing, cls) if builtin else (cls, existing)
                    raise ValueError(
                        f"{self.family} {name!r} is already registered to {_where(theirs)}, "
                        f"so {_where(ours)} cannot take the name: register it under another "
                        f"name, or pass replace=True to replace it "
                        f"(@register_{self.family}({name!r}, replace=True))")
            self._entries[name] = cls
            if replace and not builtin:
                self._replaced.add(name)
            cls.registry_name = name  # type: ignore[attr-defined]
            return cls

        return decorator

    def _load(self) -> None:
        importlib.import_module(self.package)
        import_env_modules()

    def names(self) -> list[str]:
        self._load()
        return sorted(self._entries)

    def items(self) -> Iterator[tuple[str, type[T]]]:
        self._load()
        yield from sorted(self._entries.items())

    def get(self, name: str) -> type[T]:
        self._load()
        try:
            return self._entries[name]
        except KeyError:
            known = ", ".join(sorted(self._entries)) or "(none)"
            raise ValueError(
                f"unknown {self.family} {name!r}; known: {known} (a class of your own: "
                f"list the module that registers it under imports: in the config, or in "
                f"{IMPORTS_ENV})" + did_you_mean(name, self._entries)) from None

    def build(self, name: str, **params: Any) -> T:
        """Instantiate ``name`` with keyword ``params``, rejecting unknown ones clearly."""
        cls = self.get(name)
        sig = inspect.signature(cls.__init__)
        accepts_var_kw = any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())
        if not accepts_var_kw:
            unknown = sorted(set(params) - set(sig.parameters) - {"self"})
            if unknown:
                allowed = sorted(set(sig.parameters) - {"self"})
                raise ValueError(
                    f"{self.family} {name!r} got unknown parameter(s) {unknown}; allowed: "
                    f"{allowed}" + did_you_mean(unknown, allowed))
        missing = [p.name for p in sig.parameters.values()
                   if p.name != "self" and p.default is p.empty
                   and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in params]
        if missing:
            raise ValueError(
                f"{self.family} {name!r} needs parameter(s) {missing}, which have no default: "
                f"give them in its config, e.g. {{name: {name}, "
                + ", ".join(f"{m}: ..." for m in missing) + "}")
        return cls(**params)

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._entries


def _is_builtin(cls: type) -> bool:
    """Whether ``cls`` is one of dmlkit's own classes (not a user's)."""
    return cls.__module__.partition(".")[0] == "dmlkit"


def _where(cls: type) -> str:
    """``module.QualifiedName`` of a class: what tells two registered classes apart."""
    return f"{cls.__module__}.{cls.__qualname__}"


#: environment variable naming modules (comma-separated) to import before any registry
#: lookup, for commands that read no config of yours
IMPORTS_ENV = "DMLKIT_IMPORTS"
_env_imported: set[str] = set()


def import_env_modules() -> None:
    """Import the modules ``DMLKIT_IMPORTS`` names (each once, in order), so that the
    classes they register are found by name (:mod:`dmlkit.user_modules`)."""
    import os

    names = [n.strip() for n in os.environ.get(IMPORTS_ENV, "").split(",") if n.strip()]
    todo = [n for n in names if n not in _env_imported]
    if not todo:
        return
    _env_imported.update(todo)  # (a module that looks a name up while it imports)
    from dmlkit.user_modules import import_modules

    try:
        import_modules(todo, source=IMPORTS_ENV)
    except BaseException:
        _env_imported.difference_update(todo)
        raise


DISTANCES: Registry[Any] = Registry("distance", "dmlkit.distances")
LOSSES: Registry[Any] = Registry("loss", "dmlkit.losses")
MINERS: Registry[Any] = Registry("miner", "dmlkit.miners")
SAMPLERS: Registry[Any] = Registry("sampler", "dmlkit.samplers")
MODELS: Registry[Any] = Registry("model", "dmlkit.models")

register_distance = DISTANCES.register
register_loss = LOSSES.register
register_miner = MINERS.register
register_sampler = SAMPLERS.register
register_model = MODELS.register


def import_package_members(package: str, namespace: dict[str, Any], skip: set[str]) -> list[str]:
    """Import every submodule of ``package`` (registering its classes) and export them.

    Each class defined in a submodule is added to ``namespace`` (the package's
    ``globals()``); returns the exported names for ``__all__``. Used by the family
    packages so that a new member is one file, with no list to edit.
    """
    import pkgutil

    pkg = importlib.import_module(package)
    exported: list[str] = []
    for info in pkgutil.iter_modules(pkg.__path__):
        if info.name.startswith("_") or info.name in skip:
            continue
        module = importlib.import_module(f"{package}.{info.name}")
        for name, obj in vars(module).items():
            if (
                inspect.isclass(obj)
                and obj.__module__ == module.__name__
                and not name.startswith("_")
            ):
                namespace[name] = obj
                exported.append(name)
    return sorted(exported)


# -- configs of registered objects ---------------------------------------------------------

#: constructor parameter names whose values are registered objects, and their registry
_NESTED: dict[str, Registry[Any]] = {
    "distance": DISTANCES,
    "loss": LOSSES,
    "losses": LOSSES,
    "miner": MINERS,
    "miners": MINERS,
    "model": MODELS,
}
#: (the same mapping, for the modules that walk configs of registered objects)
NESTED_PARTS = _NESTED


def config_of(obj: Any) -> dict[str, Any]:
    """The ``{"name": ..., **params}`` config of a registered object (nested ones too).

    Every ``__init__`` parameter must be stored under the same attribute name; values
    become YAML-friendly (tuples -> lists, registered objects -> nested configs,
    tensors -> lists). ``build_from_config`` inverts it.
    """
    name = getattr(type(obj), "registry_name", None)
    if name is None:
        raise TypeError(f"{type(obj).__name__} is not a registered class")
    params: dict[str, Any] = {}
    for pname, p in inspect.signature(type(obj).__init__).parameters.items():
        if pname == "self" or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if not hasattr(obj, pname):
            raise TypeError(
                f"{type(obj).__name__} must keep its __init__ parameter {pname!r} as an "
                "attribute of the same name to have a config"
            )
        params[pname] = _to_plain(getattr(obj, pname))
    return {"name": name, **params}


def _to_plain(value: Any) -> Any:
    if getattr(type(value), "registry_name", None) is not None:
        return config_of(value)
    if isinstance(value, (list, tuple)):
        return [_to_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _to_plain(v) for k, v in value.items()}
    if hasattr(value, "tolist") and not isinstance(value, (int, float, str, bool)):
        return value.tolist()
    return value


def build_from_config(registry: Registry[T], config: dict[str, Any] | str) -> T:
    """Build an object from ``"name"`` or ``{"name": ..., **params}``, nested configs too."""
    if isinstance(config, str):
        return registry.build(config)
    if not isinstance(config, dict) or "name" not in config:
        raise ValueError(f"a {registry.family} config needs a 'name' key, got {config!r}")
    params = {k: v for k, v in config.items() if k != "name"}
    for key, value in list(params.items()):
        sub = _NESTED.get(key)
        if sub is None or value is None:
            continue
        if isinstance(value, list):
            params[key] = [
                build_from_config(sub, v) if isinstance(v, (dict, str)) else v for v in value
            ]
        elif isinstance(value, dict) and "name" not in value:  # {key: config} by name
            params[key] = {
                k: build_from_config(sub, v) if isinstance(v, (dict, str)) else v
                for k, v in value.items()
            }
        elif isinstance(value, (dict, str)):
            params[key] = build_from_config(sub, value)
    return registry.build(config["name"], **params)
