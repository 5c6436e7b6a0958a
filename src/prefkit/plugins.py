"""Extensions from outside prefkit: the one way to add a loss, a selection metric, a synth method
or an evaluation scorer without editing prefkit.

A *plugin* is an ordinary importable Python module whose import registers its extensions with the
registry functions (`prefkit.losses.register_loss`, and the same shape for the other extension
points: name -> function, what it needs, options). prefkit imports plugins from two places:

1. the environment variable ``PREFKIT_PLUGINS``: module names separated by commas, e.g.
   ``PREFKIT_PLUGINS=my_losses,my_metrics`` (each importable from ``sys.path``/``PYTHONPATH``);
2. the Python entry-point group ``prefkit.plugins`` of installed packages, e.g. in the plugin's
   pyproject.toml::

       [project.entry-points."prefkit.plugins"]
       my_losses = "my_package.losses"

   The value names a module (imported) or ``module:function`` (imported, then the function is
   called with no arguments).

The CLI calls `load_plugins()` once, before it builds its parser, so a plugin's names appear in
the choices and help of every command (``prefkit train dpo ... --loss-type mynewloss``). Child
processes that prefkit starts run the same CLI and inherit the environment, so they load the same
plugins. From Python, import the plugin module yourself or call `load_plugins()`.

A plugin that cannot be imported is a usage error (`ConfigError`, exit 2) naming the plugin and
where it was named; its traceback is not shown.
"""

from __future__ import annotations

import importlib
import os
from importlib.metadata import entry_points

from prefkit.errors import ConfigError

ENV_VAR = "PREFKIT_PLUGINS"
ENTRY_POINT_GROUP = "prefkit.plugins"

_loaded: dict[str, str] = {}  # plugin spec -> where it was named; each is imported once per process


def plugin_specs() -> list[tuple[str, str]]:
    """The plugins to load, as (spec, where it was named): first ``PREFKIT_PLUGINS`` in its order,
    then the ``prefkit.plugins`` entry points sorted by name (a stable order across machines)."""
    specs = [(s.strip(), ENV_VAR) for s in os.environ.get(ENV_VAR, "").split(",") if s.strip()]
    for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        specs.append((ep.value, f"entry point {ep.name!r} in group {ENTRY_POINT_GROUP!r}"))
    return specs


def load_plugin(spec: str, where: str = "load_plugin") -> None:
    """Import one plugin, ``module`` or ``module:function`` (the function is then called with no
    arguments). Loading the same spec again does nothing."""
    if spec in _loaded:
        return
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
        if attr:
            getattr(module, attr)()
    except ConfigError:
        raise
    except Exception as exc:  # an import error, or any error the plugin raised while registering
        raise ConfigError(f"plugin {spec!r} (named by {where}) failed to load: "
                          f"{type(exc).__name__}: {exc}") from exc
    _loaded[spec] = where


def load_plugins() -> list[str]:
    """Import every plugin named by ``PREFKIT_PLUGINS`` and the ``prefkit.plugins`` entry points;
    returns the specs loaded so far. Safe to call more than once."""
    for spec, where in plugin_specs():
        load_plugin(spec, where)
    return list(_loaded)
