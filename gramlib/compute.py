"""Where independent units of work run: in this process, or as Ray tasks on a local or remote cluster.

The paper profile is hundreds of tuning runs and a dozen meta-training runs, each independent of the
others: an embarrassingly parallel grid. Rather than a scheduler of our own, units are Ray tasks
(``ray.init()`` starts a local cluster with no set-up; ``ray.init(address=...)`` joins a real one), each
with a declared resource request, submitted largest first. The *driver* alone writes results: it
records a unit when its result arrives, so a worker killed mid-unit (its task is retried by Ray) can
neither lose a row nor write one twice, and a re-run skips what was recorded (the callers' resume).

``backend: local`` runs the same units serially in this process (tests, debugging, tiny profiles):
results are identical either way, since every unit seeds itself and runs with a fixed thread count.

Configuration: params.yaml ``compute`` (with ``profiles.<name>.compute`` over it), :class:`ComputeConfig`.
It changes how fast results come, never what they are, so no stage's configuration includes it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import os
import pickle
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gramlib.config import load_params, section_layers, typed

log = logging.getLogger(__name__)

BACKENDS = ("local", "ray")


@dataclass(frozen=True)
class UnitResources:
    """What one unit asks the cluster for (Ray's ``num_cpus`` / ``num_gpus``; a GPU may be shared: 0.25)."""

    cpus: float = 1.0
    gpus: float = 0.0


@dataclass(frozen=True)
class ComputeConfig:
    """How units run: ``local`` (serially, in this process) or ``ray``.

    ``address``: None starts a local Ray cluster for the run (``num_cpus`` of this machine's CPUs, all when
    None); ``"auto"`` or ``"ray://head:10001"`` joins a running cluster. ``unit`` is each suite unit's
    request, ``meta_unit`` each meta-training run's. ``max_retries``: how often a unit whose worker died is
    re-run (a unit that *raises* is not retried: the error is the user's to see). ``fault_dir`` is a
    fault-injection hook for tests only: a unit whose marker file is absent there creates it and kills
    its own worker once.
    """

    backend: str = "local"
    address: str | None = None
    num_cpus: int | None = None
    unit: UnitResources = field(default_factory=UnitResources)
    meta_unit: UnitResources = field(default_factory=UnitResources)
    max_retries: int = 3
    object_store_mb: int = 256
    fault_dir: str | None = None

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"compute.backend must be one of {list(BACKENDS)}, got {self.backend!r}")
        if self.num_cpus is not None and self.num_cpus < 1:
            raise ValueError(f"compute.num_cpus must be >= 1 or null, got {self.num_cpus}")
        if self.max_retries < 0:
            raise ValueError(f"compute.max_retries must be >= 0, got {self.max_retries}")
        for name, r in (("unit", self.unit), ("meta_unit", self.meta_unit)):
            if r.cpus <= 0 or r.gpus < 0:
                raise ValueError(f"compute.{name}: cpus must be > 0 and gpus >= 0, got {r}")


LOCAL = ComputeConfig()


def compute_config(profile_name: str, params: dict | None = None, **override: Any) -> ComputeConfig:
    """``compute`` with ``profiles.<profile>.compute`` over it (strict: an unknown key names its path);
    ``override`` (e.g. ``backend="local"`` from the CLI) wins where not None."""
    (where, block), *over = section_layers("compute", profile_name, load_params() if params is None else params)
    cfg = typed(ComputeConfig, block, where, over=over)
    changes = {k: v for k, v in override.items() if v is not None}
    return dataclasses.replace(cfg, **changes) if changes else cfg


# ------------------------------------------------------------------------------------------------
# the worker side: one set-up per process, then units


_READY: dict[str, Any] = {}


def _setup_key(setup: Callable | None, args: tuple) -> str:
    name = "" if setup is None else f"{setup.__module__}.{setup.__qualname__}"
    return name + ":" + hashlib.sha256(pickle.dumps(args)).hexdigest()


def fault_marker(fault_dir: str | os.PathLike, item: Any) -> Path:
    """The file whose absence makes ``item``'s worker kill itself (tests create it to spare a unit)."""
    return Path(fault_dir) / (hashlib.sha256(repr(item).encode()).hexdigest()[:16] + ".killed")


def _inject_fault(fault_dir: str | None, item: Any) -> None:
    if fault_dir is None:
        return
    marker = fault_marker(fault_dir, item)
    if not marker.exists():
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(repr(item))
        log.warning("fault injection: killing worker %d in the middle of %r", os.getpid(), item)
        os._exit(17)  # as a killed worker: no clean-up, no result


def _call(setup: Callable | None, setup_args: tuple, fn: Callable, item: Any, fault_dir: str | None = None) -> Any:
    """Run ``fn(item)`` in this worker, after ``setup(*setup_args)`` once per process (e.g. load the backbone)."""
    key = _setup_key(setup, setup_args)
    if key not in _READY:
        _READY.clear()
        if setup is not None:
            setup(*setup_args)
        _READY[key] = True
    _inject_fault(fault_dir, item)
    return fn(item)


# ------------------------------------------------------------------------------------------------
# the driver side


@contextlib.contextmanager
def ray_session(cfg: ComputeConfig) -> Iterator[Any]:
    """Ray, initialised for ``cfg`` (a local cluster, or the one at ``cfg.address``) and shut down after,
    unless this process had initialised it already (then it is left as found)."""
    import ray

    if ray.is_initialized():
        yield ray
        return
    kw: dict[str, Any] = {"include_dashboard": False, "log_to_driver": True, "logging_level": logging.WARNING}
    if cfg.address:
        ray.init(address=cfg.address, **kw)
    else:
        # the workers inherit this process's environment (PYTHONPATH, HF_HUB_OFFLINE, ...)
        ray.init(num_cpus=cfg.num_cpus, object_store_memory=cfg.object_store_mb * 2**20, **kw)
    try:
        yield ray
    finally:
        ray.shutdown()


def map_units(fn: Callable[[Any], Any], items: Sequence[Any], on_result: Callable[[Any, Any], None],
              cfg: ComputeConfig = LOCAL, *, setup: Callable[..., None] | None = None, setup_args: tuple = (),
              resources: UnitResources | None = None) -> None:
    """Call ``on_result(item, fn(item))`` in this process for every item, as each finishes.

    ``fn`` and ``setup`` must be module-level functions (they travel to Ray workers by reference).
    Items are submitted in the given order (callers pass the largest first). A unit that raises
    raises here, after the units that finished before it were recorded.
    """
    if not items:
        return
    if cfg.backend == "local":
        for item in items:
            on_result(item, _call(setup, setup_args, fn, item, cfg.fault_dir))
        return
    res = resources or cfg.unit
    with ray_session(cfg) as ray:
        remote = ray.remote(_call).options(num_cpus=res.cpus, num_gpus=res.gpus, max_retries=cfg.max_retries,
                                           retry_exceptions=False)
        pending = {remote.remote(setup, setup_args, fn, item, cfg.fault_dir): item for item in items}
        log.info("%d unit(s) submitted to Ray (%s cpus, %s gpus each)", len(pending), res.cpus, res.gpus)
        try:
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                for ref in ready:
                    on_result(pending.pop(ref), ray.get(ref))
        finally:
            for ref in pending:  # on an error: do not leave units running behind the raised exception
                ray.cancel(ref, force=True)


__all__ = ["BACKENDS", "LOCAL", "ComputeConfig", "UnitResources", "compute_config", "fault_marker", "map_units", "ray_session"]
