"""Data parallelism over the meta-batch: one `jax.sharding.Mesh`, one axis.

The meta-batch of B optimizees is split into D equal slices, one per device of
a 1-D mesh (axis `AXIS`). Inside `jax.shard_map` every device unrolls its B/D
optimizees exactly as a single device would unroll all B, and the meta-loss is
the `pmean` of the slices' means, so its gradient is the meta-gradient of the
whole meta-batch; the meta-parameters and the meta-optimizer state are
replicated and updated identically everywhere. Nothing else crosses devices.

Each device keeps its slice of the inner state with a leading axis of size 1
(`stack` / `unstack`), whatever the optimizer's state layout is: a
coordinatewise optimizer keeps one `[..., B/D * N]` state per slice, which has
no meta-batch axis to shard. The optimizees and their minibatches are the
ones a single device would draw (keys are split for the whole meta-batch and
sliced), so a sharded run follows the unsharded one up to float reassociation.

Multi-host runs use the same mesh over every process's devices after
`jax.distributed.initialize` (`experiments.meta_train --coordinator_address`).
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

AXIS = "meta_batch"


def resolve_num_devices(requested: int | None, meta_batch_size: int,
                        available: int | None = None) -> int:
  """How many devices a meta-batch is spread over.

  Args:
    requested: a device count, or None for as many devices as are present that
      divide `meta_batch_size` evenly.
    meta_batch_size: optimizees per meta-step.
    available: devices present (default `jax.device_count()`, every process's).

  Returns:
    The number of devices, an int that divides `meta_batch_size`.

  Raises:
    ValueError: `requested` exceeds the devices present or does not divide the
      meta-batch.
  """
  available = jax.device_count() if available is None else available
  if requested is None:
    return max(d for d in range(1, min(available, meta_batch_size) + 1)
               if meta_batch_size % d == 0)
  if requested > available:
    raise ValueError(f"num_devices={requested} but only {available} device"
                     f"{'s are' if available > 1 else ' is'} present; accepted: 1 to "
                     f"{available}")
  if meta_batch_size % requested:
    divisors = [d for d in range(1, available + 1) if meta_batch_size % d == 0]
    raise ValueError(f"num_devices={requested} does not divide meta_batch_size="
                     f"{meta_batch_size}; accepted here: {', '.join(map(str, divisors))}")
  return requested


def mesh(num_devices: int, devices: Sequence[Any] | None = None) -> Mesh:
  """A 1-D mesh over the first `num_devices` devices (of every process).

  Args:
    num_devices: how many devices the mesh spans.
    devices: the devices to take them from (default `jax.devices()`).

  Returns:
    The `Mesh`, its one axis named `AXIS`.
  """
  devices = jax.devices() if devices is None else devices
  return Mesh(np.asarray(devices[:num_devices]), (AXIS,))


def stack(tree):
  """A device's slice of the inner state, as the `[1, ...]` block of the global array.

  Args:
    tree: a pytree of arrays (one device's slice).

  Returns:
    The pytree with a leading axis of size 1 added to every leaf.
  """
  return jax.tree.map(lambda x: x[None], tree)


def unstack(tree):
  """The inverse of `stack`: a device's `[1, ...]` block as its slice.

  Args:
    tree: a pytree of arrays, each with a leading axis of size 1.

  Returns:
    The pytree with that leading axis removed (each leaf's first entry).
  """
  return jax.tree.map(lambda x: x[0], tree)


def replicated(mesh_: Mesh) -> NamedSharding:
  """The sharding that replicates an array over every device of a mesh.

  Args:
    mesh_: the mesh.

  Returns:
    A `NamedSharding` with an empty `PartitionSpec`.
  """
  return NamedSharding(mesh_, PartitionSpec())


def replicate(tree, mesh_: Mesh):
  """`tree` (the same host value on every process) as arrays replicated over `mesh_`.

  `make_array_from_callback` rather than `device_put`, so the same call works
  when the mesh spans devices of other processes.

  Args:
    tree: a pytree of arrays (or values convertible with `np.asarray`).
    mesh_: the mesh to replicate over.

  Returns:
    The pytree of replicated `jax.Array`s (leaves already so replicated are kept).
  """
  sharding = replicated(mesh_)

  def one(x):
    if isinstance(x, jax.Array) and x.sharding == sharding:
      return x
    value = np.asarray(jax.device_get(x))
    return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])

  return jax.tree.map(one, tree)


def local_copy(tree):
  """One local device's full copy of replicated arrays (for work done once per process).

  Args:
    tree: a pytree of replicated `jax.Array`s (other leaves are kept as they are).

  Returns:
    The pytree with each array replaced by its first addressable shard.
  """
  return jax.tree.map(lambda x: x.addressable_data(0) if isinstance(x, jax.Array) else x, tree)
