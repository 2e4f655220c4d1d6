"""One registry type for everything looked up by name: proxies here, and in ``unlearn`` the unlearning methods,
attacks, datasets, models, farms and RUM policies.

A :class:`Registry` maps names to entries in registration order. :meth:`Registry.register` refuses a name already
taken unless ``force=True``; :meth:`Registry.get` refuses an unknown name with the names it holds (never a list
written by hand). Packages outside this one add entries through the registry's entry-point group, read on the first
lookup: each entry point names a module whose import registers entries (or, with ``on_entry_point``, an object the
owner registers itself).

>>> colours = Registry("colour")
>>> colours.register("red", (255, 0, 0))
>>> @colours.register("green")
... def green():
...     return (0, 255, 0)
>>> colours.names(), "red" in colours
(['green', 'red'], True)
>>> colours.get("blue")
Traceback (most recent call last):
...
ValueError: unknown colour 'blue'; expected one of ['green', 'red']
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from typing import Any, Generic, TypeVar

__all__ = ["Registry"]

T = TypeVar("T")
_MISSING: Any = object()


class Registry(MutableMapping[str, T], Generic[T]):
    """Entries of one kind keyed by name, filled by :meth:`register` (a call or a decorator).

    It is a mapping in registration order (``list(registry)``; :meth:`names` sorts). Reading it (``in``, ``[]``,
    :meth:`get`, :meth:`names`, iteration) first loads the entry-point group, once; ``registry[name] = entry`` and
    ``del registry[name]`` change it as on a dict (no duplicate check: :meth:`register` is the checked way in).

    Args:
        kind: what an entry is, in words (``"proxy"``, ``"unlearning method"``): it names the entries in messages.
        entry_point_group: the ``importlib.metadata`` entry-point group outside packages register through, if any.
        entries: entries to start with.
        on_entry_point: ``f(entry_point, loaded)``, called with each entry point and what it names, for an owner
            that registers the named object itself (a ``TypeError`` or ``ValueError`` it raises is reported as the
            plugin failing to register). Without it, importing the named module is all a plugin does.
    """

    def __init__(self, kind: str, entry_point_group: str | None = None, *, entries: Mapping[str, T] | None = None,
                 on_entry_point: Callable[[importlib.metadata.EntryPoint, Any], None] | None = None):
        self.kind = kind
        self.entry_point_group = entry_point_group
        self._entries: dict[str, T] = dict(entries or {})
        self._on_entry_point = on_entry_point
        self._loaded = entry_point_group is None
        self._entry_points_done: set[tuple[str, str]] = set()

    def register(self, name: str, entry: T = _MISSING, *, force: bool = False):
        """Register ``entry`` under ``name``; without ``entry``, a decorator that registers what it decorates (and
        returns it unchanged).

        Raises:
            ValueError: ``name`` already registered and ``force`` not given.
        """
        if entry is _MISSING:
            def decorator(obj: T) -> T:
                self.register(name, obj, force=force)
                return obj

            return decorator
        if name in self._entries and not force:
            raise ValueError(f"{self.kind} {name!r} is already registered (pass force=True to replace it)")
        self._entries[name] = entry
        return None

    def get(self, name: str, default: Any = _MISSING) -> T:
        """The entry registered as ``name`` (``default`` if given and there is none).

        Raises:
            ValueError: an unknown name without ``default``, with the names there are.
        """
        self._ensure_loaded()
        if name in self._entries:
            return self._entries[name]
        if default is not _MISSING:
            return default
        raise ValueError(f"unknown {self.kind} {name!r}; expected one of {self.names()}")

    def names(self) -> list[str]:
        """The registered names (the entry points' too), sorted."""
        self._ensure_loaded()
        return sorted(self._entries)

    def registered(self) -> dict[str, T]:
        """The entries registered so far, in registration order, without reading the entry points (for a
        package's own constants, built while it is imported)."""
        return dict(self._entries)

    def load_entry_points(self) -> list[tuple[importlib.metadata.EntryPoint, Any]]:
        """Load the entry points of the group not loaded before (importing a module registers what it defines):
        ``(entry point, what it names)`` for each. Lookups call it once by themselves.

        Raises:
            RuntimeError: a plugin that fails to load (or to register, see ``on_entry_point``), named.
        """
        self._loaded = True
        if self.entry_point_group is None:
            return []
        loaded = []
        for entry_point in importlib.metadata.entry_points(group=self.entry_point_group):
            key = (entry_point.name, entry_point.value)
            if key in self._entry_points_done:
                continue
            try:
                obj = entry_point.load()
            except Exception as err:
                raise RuntimeError(f"{self.kind} plugin {entry_point.name!r} ({entry_point.value}) failed to load: "
                                   f"{err}") from err
            if self._on_entry_point is not None:
                try:
                    self._on_entry_point(entry_point, obj)
                except (TypeError, ValueError) as err:
                    raise RuntimeError(f"{self.kind} plugin {entry_point.name!r} ({entry_point.value}) failed to "
                                       f"register: {err}") from err
            self._entry_points_done.add(key)
            loaded.append((entry_point, obj))
        return loaded

    def _ensure_loaded(self) -> None:
        if not self._loaded:
            self.load_entry_points()

    def __getitem__(self, name: str) -> T:
        self._ensure_loaded()
        return self._entries[name]

    def __setitem__(self, name: str, entry: T) -> None:
        self._entries[name] = entry

    def __delitem__(self, name: str) -> None:
        del self._entries[name]

    def __contains__(self, name: object) -> bool:
        self._ensure_loaded()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        self._ensure_loaded()
        return iter(list(self._entries))

    def __len__(self) -> int:
        self._ensure_loaded()
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {list(self._entries)})"
