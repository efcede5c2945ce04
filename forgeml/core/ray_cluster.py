"""Ray, the optional scale-out engine of curation and HPO trials (`pip install 'forgeml[ray]'`).

`ray_cluster()` joins the Ray cluster already started in this process, connects to the
organisation's cluster at an address, or starts a local one whose every server listens on
127.0.0.1 only, with usage statistics and the dashboard off (forgeml.core.runtime).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from types import ModuleType

from forgeml.core.errors import ConfigError, ForgeError
from forgeml.core.runtime import enforce_offline

LOOPBACK = "127.0.0.1"
# Ray binds its servers to the node's routable IP unless it believes it cannot form a
# multi-node cluster, which on Linux only this switch (named for Windows/macOS) says.
LOCAL_CLUSTER_ENV = {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_DISABLE_DOCKER_CPU_WARNING": "1",
}


def import_ray() -> ModuleType:
    """The `ray` module, or a ConfigError that says how to install it."""
    enforce_offline()  # before ray's first import: it reads some switches at import time
    try:
        import ray
    except ImportError:
        raise ConfigError(
            "the ray executor needs Ray, which is not installed",
            hint="pip install 'forgeml[ray]', or use the local executor",
        ) from None
    return ray


def start_local_ray(num_cpus: int | None = None) -> ModuleType:
    """Start a one-machine Ray cluster on loopback (no dashboard, no usage statistics)."""
    os.environ.update(LOCAL_CLUSTER_ENV)
    ray = import_ray()
    # ray read the switch at import; an earlier import (before the line above) missed it
    from ray._private import ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = False
    ray.init(
        address="local",
        num_cpus=num_cpus,
        include_dashboard=False,
        _node_ip_address=LOOPBACK,
        log_to_driver=False,
        logging_level=logging.WARNING,
    )
    if (ip := ray.util.get_node_ip_address()) != LOOPBACK:
        ray.shutdown()
        raise ForgeError(
            f"the local Ray cluster came up on {ip}, not on {LOOPBACK}",
            hint="start Ray yourself on loopback or pass the address of your cluster",
        )
    return ray


@contextlib.contextmanager
def ray_cluster(address: str | None = None, *, num_cpus: int | None = None) -> Iterator[ModuleType]:
    """Yield the `ray` module connected to a cluster, and disconnect only what was started.

    A cluster this process already joined (`ray.init` by the caller) is used as it is;
    `address` ("host:port" or "ray://host:port") is a cluster inside the organisation whose
    nodes have forgeml installed; None starts a local cluster of `num_cpus` CPUs (default:
    all) on 127.0.0.1 for the time of the block.
    """
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    if address is None:
        start_local_ray(num_cpus)
    else:
        ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
    try:
        yield ray
    finally:
        ray.shutdown()
