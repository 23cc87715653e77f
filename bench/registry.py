"""Name -> entry registries for every named thing a user can type: methods, datasets,
presets, protocols and executors (the timm ``register_model`` habit).

Each method or dataset is one file that registers its class with a decorator under its CLI
name. Unknown names fail at once with the list of valid choices.

The registries of methods and datasets also hold what plugins register (:mod:`bench.plugins`):
installed plugins are imported the first time such a registry is asked for a name, so
``import bench`` stays as cheap as before. While a plugin is being imported, registering a
name that is taken is an error that names the plugin (outside plugins it stays a warning).
"""

from __future__ import annotations

import contextlib
import fnmatch
import warnings
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Generic, Protocol, TypeVar

from bench.errors import ConfigError

T = TypeVar("T")

# The plugin being imported now: (how it was named, its module), or None (bench.plugins).
_loading: list[tuple[str, str]] = []


class PluginSource(Protocol):
    """What a registry loads before its first look-up (:class:`bench.plugins.InstalledPlugins`)."""

    def load(self) -> None: ...


class UnknownNameError(ConfigError, KeyError):
    """An unknown registry name; the message lists the valid choices. A ConfigError, so
    every command reports it as bad input."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


@contextlib.contextmanager
def registering_from(label: str, module: str):
    """While active, registrations come from the plugin ``label`` (its import ``module``):
    a name that is already taken raises :class:`ConfigError` naming both."""
    _loading.append((label, module))
    try:
        yield
    finally:
        _loading.pop()


class Registry(Generic[T]):
    """A named collection of classes, filled by the ``register`` decorator; with
    ``plugins``, installed plugins are loaded before the first look-up."""

    def __init__(self, kind: str, plugins: PluginSource | None = None, base: type | None = None):
        self.kind = kind
        self.plugins = plugins  # loaded before the first look-up
        self.base = base  # every registered class derives from it
        self._entries: dict[str, T] = {}
        # name -> (who registered it: a plugin's label or the defining module, the module
        # whose import registers it)
        self._origins: dict[str, tuple[str, str]] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            self._check_class(name, obj)
            if name in self._entries and self._entries[name] is not obj:
                if _loading:
                    raise ConfigError(
                        f"plugin {_loading[-1][0]} registers {self.kind} {name!r}, which "
                        f"{self._origins[name][0]} already registered; give it another name"
                    )
                warnings.warn(
                    f"{self.kind} {name!r} registered twice; the later one wins", stacklevel=2
                )
            self._entries[name] = obj
            module = getattr(obj, "__module__", None) or type(obj).__module__
            self._origins[name] = _loading[-1] if _loading else (module,) * 2
            if isinstance(obj, type):
                obj.name = name  # type: ignore[attr-defined]
            return obj

        return decorator

    @classmethod
    def of(cls, kind: str, entries: Iterable[Any]) -> Registry:
        """A registry of ``entries`` (objects with a ``name``), each registered under it."""
        registry = cls(kind)
        for entry in entries:
            registry.register(entry.name)(entry)
        return registry

    def _check_class(self, name: str, obj: Any) -> None:
        """``obj`` derives from :attr:`base` (else ConfigError naming who registered it)."""
        base = self.base
        if base is None or (isinstance(obj, type) and issubclass(obj, base)):
            return
        who = f"plugin {_loading[-1][0]}" if _loading else f"module {obj.__module__}"
        raise ConfigError(
            f"{who} registers {obj!r} as {self.kind} {name!r}, but it is not a subclass of "
            f"{base.__module__}.{base.__qualname__}; derive it from that class"
        )

    def unregister(self, name: str) -> None:
        """Forget ``name`` (tests that register a class for a while)."""
        self._entries.pop(name, None)
        self._origins.pop(name, None)

    def origin(self, name: str) -> str | None:
        """The module to import so that ``name`` is registered again (in a worker process
        that runs a job): the plugin or module that registered it, or None for the
        harness's own entries (``bench.*``) and classes defined in ``__main__``."""
        self.get(name)
        module = self._origins[name][1]
        if module == "__main__" or module == "bench" or module.startswith("bench."):
            return None
        return module

    def plugin(self, name: str) -> str | None:
        """The module of the plugin that registered ``name`` (:mod:`bench.plugins`), or
        None when no plugin did."""
        self.get(name)
        label, module = self._origins[name]
        return module if label != module else None

    def get(self, name: str, where: str = "") -> T:
        """The entry ``name``; UnknownNameError listing the valid names otherwise (``where``,
        e.g. ``for finetune.protocol``, says where the name was given)."""
        self._load_plugins()
        try:
            return self._entries[name]
        except KeyError:
            where = f" {where}" if where else ""
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}{where}; valid {self.kind}s: "
                + ", ".join(self.names())
            ) from None

    def names(self, pattern: str = "*") -> list[str]:
        """Registered names in registration order, filtered by a shell-style wildcard."""
        self._load_plugins()
        return [n for n in self._entries if fnmatch.fnmatch(n, pattern)]

    def _load_plugins(self) -> None:
        if self.plugins is not None:
            self.plugins.load()

    def __contains__(self, name: object) -> bool:
        self._load_plugins()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        self._load_plugins()
        return len(self._entries)
