"""Farms by name: ``"local"`` (:class:`~.local.LocalFarm`), ``"packed"`` (:class:`~.packed.PackedFarm`) and
``"ray"`` (:class:`~.ray.RayFarm`, imported only when asked for: Ray is an optional dependency);
:func:`register_farm` adds one."""

from __future__ import annotations

import os
from collections.abc import Callable

from proxies.registries import Registry

from .local import Farm, LocalFarm
from .packed import PackedFarm

__all__ = ["farms", "get_farm", "register_farm"]


def _ray_farm(folder: str | os.PathLike, **options) -> Farm:
    from .ray import RayFarm  # Ray is optional: imported only when asked for

    return RayFarm(folder, **options)


_FARMS: Registry[Callable[..., Farm]] = Registry("farm", entries={"local": LocalFarm, "packed": PackedFarm,
                                                                  "ray": _ray_farm})


def register_farm(name: str, factory: Callable[..., Farm], *, force: bool = False) -> None:
    """Add a farm: ``factory(folder, progress=..., **options)`` makes it (duplicates refused unless ``force``)."""
    _FARMS.register(name, factory, force=force)


def farms() -> list[str]:
    """The names :func:`get_farm` knows.

    >>> farms()
    ['local', 'packed', 'ray']
    """
    return _FARMS.names()


def get_farm(farm: str | Farm, folder: str | os.PathLike, *, progress: bool = True, **options) -> Farm:
    """A farm by name, or the farm object itself.

    Args:
        farm: ``"local"`` (this process, one model after another), ``"packed"`` (this process, packs of models
            trained at once as one vmapped ensemble, see :class:`unlearn.farm.packed.PackedFarm`), ``"ray"`` (a Ray
            cluster, see :class:`unlearn.farm.ray.RayFarm`) or an object with a ``run(fn, jobs, shared)`` method.
        folder: where a farm given by name writes its results.
        progress: show a progress bar.
        **options: settings of a farm given by name, e.g. ``models_per_pack`` for ``"packed"``, ``address``,
            ``gpus_per_model``, ``max_retries`` for Ray.

    Raises:
        ValueError: an unknown name.
        ModuleNotFoundError: ``"ray"`` without Ray installed.
        TypeError: an object without ``run``, or ``options`` with a farm object.

    >>> get_farm("local", "runs/models").folder.name
    'models'
    """
    if isinstance(farm, str):
        factory = _FARMS.get(farm, None)
        if factory is None:
            raise ValueError(f"unknown farm {farm!r}; expected one of {', '.join(map(repr, farms()))} "
                             "or a farm object")
        return factory(folder, progress=progress, **options)
    if not callable(getattr(farm, "run", None)):
        raise TypeError(f"farm must be one of {', '.join(map(repr, farms()))} or an object with a "
                        f"run(fn, jobs, shared) method, got {farm!r}")
    if options:
        raise TypeError(f"farm options ({', '.join(sorted(options))}) apply to a farm given by name, not to {farm!r}")
    return farm


