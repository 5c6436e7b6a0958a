"""The one shape of prefkit's extension points: a name -> an entry (a function and what it needs).

Selection metrics (`prefkit.select.metrics.register_metric`), synth methods
(`prefkit.synth.methods.register_synth_method`) and evaluation scorers
(`prefkit.evaluate.scorers.register_scorer`) each keep one `Registry`; the CLI's choices and the
options objects read their names from it, so an extension registered by a plugin
(`prefkit.plugins`) is offered and validated like a built-in one. Re-registering a name replaces
the entry (a user may override a built-in), as `prefkit.losses.register_loss` does.
"""

from __future__ import annotations

from typing import Callable, Generic, Iterator, TypeVar

from prefkit.errors import ConfigError

__all__ = ["Registry"]

E = TypeVar("E")


class Registry(Generic[E]):
    """Entries by name. `kind` names an entry in errors ('metric')."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, E] = {}

    def add(self, name: str, entry: E) -> E:
        if not name or not isinstance(name, str):
            raise TypeError(f"a {self.kind} needs a non-empty name, not {name!r}")
        self._entries[name] = entry
        return entry

    def decorator(self, name: str, make_entry: Callable[[Callable], E]) -> Callable[[Callable], Callable]:
        """A decorator that registers `make_entry(fn)` as `name` and returns `fn` unchanged."""

        def deco(fn: Callable) -> Callable:
            self.add(name, make_entry(fn))
            return fn

        return deco

    def get(self, name: str) -> E:
        """The entry registered as `name`; ConfigError naming the choices when there is none."""
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise ConfigError(f"unknown {self.kind} {name!r}; choose from {', '.join(self.names())}") from None

    def names(self) -> list[str]:
        """Registered names, sorted (as `prefkit.losses.available_losses`): the same order
        whichever module registered first."""
        return sorted(self._entries)

    def __contains__(self, name) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[E]:
        return iter([self._entries[name] for name in self.names()])
