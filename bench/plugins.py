"""Methods and datasets from outside this repository (docs/PLUGINS.md).

A plugin is a module whose import registers classes with the usual decorators
(``register_method``, ``register_dataset``). Two ways in:

* an installed package declares entry points in the groups ``bench.methods`` and
  ``bench.datasets``, each value a module to import::

      [project.entry-points."bench.methods"]
      dcl = "bench_example_plugin.dcl"

  They are imported once per process, the first time the method or dataset registry is
  asked for a name (so ``import bench`` does not pay for them), SLURM and submitit workers
  included;
* a module on the Python path, named with ``--plugin module.path`` (every command) or in
  ``$BENCH_PLUGINS`` (comma-separated). Each job records the plugin modules its method and
  dataset came from (``plugins``, not part of its id) and ``bench.jobs.execute`` imports
  them before it runs, so a worker started elsewhere registers them too.

A plugin that fails to import, or registers a name that is already taken, is a
:class:`PluginError` (a ConfigError: one line, exit code 2) that names it.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterable
from pathlib import Path

from bench.config import ConfigError
from bench.registry import registering_from

GROUPS = ("bench.methods", "bench.datasets")
PLUGINS_ENV = "BENCH_PLUGINS"


class PluginError(ConfigError):
    """A plugin could not be imported; the message names it and the underlying error."""


class InstalledPlugins:
    """The installed plugins of this process (entry points of :data:`GROUPS`, then the
    modules of ``$BENCH_PLUGINS``), imported once, when a registry that holds plugins is
    first asked for a name. A failure is raised to that caller, and the next look-up tries
    again (and fails again while the plugin is broken), so no error outlives its cause."""

    def __init__(self) -> None:
        self.state = "not loaded"  # -> "loading" -> "loaded"

    def load(self) -> None:
        if self.state != "not loaded":
            return  # loaded, or loading now (a plugin that looks a name up while it registers)
        self.state = "loading"
        from importlib.metadata import entry_points  # 20 ms: only when plugins are looked up

        try:
            for group in GROUPS:
                for point in entry_points(group=group):
                    dist = f" of {point.dist.name}" if getattr(point, "dist", None) else ""
                    where = f"{point.value!r} (entry point {point.name!r} in {group}{dist})"
                    import_plugin(point.module, where)
            for module in env_plugins():
                import_plugin(module, f"{module!r} (${PLUGINS_ENV})")
        except BaseException:
            self.state = "not loaded"
            raise
        self.state = "loaded"


# the one source of installed plugins, shared by the method and dataset registries
INSTALLED = InstalledPlugins()


def load_installed() -> None:
    """Import the installed plugins unless this process did already."""
    INSTALLED.load()


def env_plugins() -> tuple[str, ...]:
    """The plugin modules named in ``$BENCH_PLUGINS``."""
    return tuple(m.strip() for m in os.environ.get(PLUGINS_ENV, "").split(",") if m.strip())


def load_plugins(modules: Iterable[str], how: str = "--plugin") -> tuple[str, ...]:
    """Import the plugin ``modules`` (named by ``how``) after the installed ones; importing
    one again does nothing. Returns the modules."""
    load_installed()
    modules = tuple(modules)
    for module in modules:
        import_plugin(module, f"{module!r} ({how})")
    return modules


def import_plugin(module: str, label: str) -> None:
    """Import ``module``, its registrations attributed to the plugin ``label``."""
    check_module_name(module)
    try:
        with registering_from(label, module):
            importlib.import_module(module)
    except ConfigError:
        raise  # a name registered twice: the message names the plugin already
    except Exception as error:  # noqa: BLE001  (any failure of foreign code, in one line)
        lines = str(error).strip().splitlines()
        detail = f": {lines[0]}" if lines else ""
        raise PluginError(
            f"plugin {label} failed to import: {type(error).__name__}{detail}"
        ) from None


def check_module_name(module: str) -> None:
    """``module`` is a dotted module name, not a file path (PluginError saying how to name
    the file's module instead)."""
    if "/" not in module and "\\" not in module and not module.endswith(".py"):
        return
    path = Path(module)
    raise PluginError(
        f"a plugin is named by its module, not by a file path ({module}); put its folder on "
        f"the Python path and name the module: PYTHONPATH={path.parent} python -m bench "
        f"--plugin {path.stem} ..."
    )
