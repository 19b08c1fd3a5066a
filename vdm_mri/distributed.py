"""Several JAX processes (`jax.distributed`): the command-line flags, checked, and the start-up.

Both CLIs (`vdm_mri.train`, `vdm_mri.sample`) take

  --coordinator_address=HOST:PORT --num_processes=N --process_id=I   explicit (all three), or
  --multi_host                                                         auto-detected (SLURM,
                                                                       Open MPI, Cloud TPU, …)

and call `initialize_from_flags` before any other JAX call. With --multi_host, explicit values
given as well override what would be detected. Bad combinations raise DistributedError (the CLIs
print one line and exit 2). On CPUs the processes' collectives run over gloo (JAX's default), so
several local processes with `localhost:PORT` as coordinator behave as hosts of a cluster.

After start-up every process sees all global devices (`jax.devices()`) and its own
(`jax.local_devices()`); `is_primary()` (process 0) is the one that writes shared outputs.
"""

from __future__ import annotations

import dataclasses
import re

from absl import flags


class DistributedError(ValueError):
  """A bad combination of the multi-process flags; the message names the flag to fix."""


@dataclasses.dataclass(frozen=True)
class ClusterSpec:
  """What `jax.distributed.initialize` is called with; None fields are auto-detected."""

  coordinator_address: str | None = None
  num_processes: int | None = None
  process_id: int | None = None
  auto: bool = False  # --multi_host: detect what is not given

  @property
  def enabled(self) -> bool:
    return self.auto or self.coordinator_address is not None


_ADDRESS = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):(\d{1,5})$")


def check_address(address: str) -> str:
  """`address` if it reads HOST:PORT (PORT in 1..65535; [IPv6]:PORT), else DistributedError."""
  match = _ADDRESS.match(address)
  if match is None or not 0 < int(match.group(2)) < 65536:
    raise DistributedError(f"--coordinator_address={address!r}: expected HOST:PORT "
                           "(e.g. localhost:12355 or node001:12355)")
  return address


def cluster_spec(*, coordinator_address: str | None = None, num_processes: int | None = None,
                 process_id: int | None = None, multi_host: bool = False) -> ClusterSpec:
  """The checked spec of the flags' values (see the module doc). Raises DistributedError."""
  given = {"--coordinator_address": coordinator_address, "--num_processes": num_processes,
           "--process_id": process_id}
  if not multi_host and any(v is not None for v in given.values()):
    missing = [name for name, v in given.items() if v is None]
    if missing:
      raise DistributedError(f"{', '.join(missing)} missing: several processes need "
                             "--coordinator_address, --num_processes and --process_id (or "
                             "--multi_host to detect them)")
  if coordinator_address is not None:
    check_address(coordinator_address)
  if num_processes is not None and num_processes < 1:
    raise DistributedError(f"--num_processes={num_processes}: must be at least 1")
  if process_id is not None:
    if process_id < 0:
      raise DistributedError(f"--process_id={process_id}: must be at least 0")
    if num_processes is not None and process_id >= num_processes:
      raise DistributedError(f"--process_id={process_id} with --num_processes={num_processes}: "
                             f"ids run from 0 to {num_processes - 1}")
  return ClusterSpec(coordinator_address, num_processes, process_id, auto=multi_host)


def define_flags(fv: flags.FlagValues = flags.FLAGS):
  """--multi_host, --coordinator_address, --num_processes, --process_id on `fv`."""
  flags.DEFINE_bool("multi_host", False, "start JAX's multi-process runtime with the cluster "
                    "settings auto-detected (SLURM, Open MPI, Cloud TPU, …)", flag_values=fv)
  flags.DEFINE_string("coordinator_address", None, "HOST:PORT of process 0's coordinator "
                      "(several processes; with --num_processes and --process_id)",
                      flag_values=fv)
  flags.DEFINE_integer("num_processes", None, "number of processes (with "
                       "--coordinator_address)", flag_values=fv)
  flags.DEFINE_integer("process_id", None, "this process's id, 0 … num_processes-1",
                       flag_values=fv)


def spec_from_flags(fv: flags.FlagValues = flags.FLAGS) -> ClusterSpec:
  return cluster_spec(coordinator_address=fv.coordinator_address,
                      num_processes=fv.num_processes, process_id=fv.process_id,
                      multi_host=fv.multi_host)


def initialize(spec: ClusterSpec) -> bool:
  """Start the multi-process runtime for `spec` (nothing when not enabled); True if started.
  Must come before any other JAX call of the process."""
  if not spec.enabled:
    return False
  import jax  # pylint: disable=g-import-not-at-top
  jax.distributed.initialize(coordinator_address=spec.coordinator_address,
                             num_processes=spec.num_processes, process_id=spec.process_id)
  return True


def initialize_from_flags(fv: flags.FlagValues = flags.FLAGS) -> bool:
  """`initialize(spec_from_flags(fv))`. Raises DistributedError on a bad combination."""
  return initialize(spec_from_flags(fv))


def is_primary() -> bool:
  """Whether this is process 0, the one that writes outputs shared by all processes."""
  import jax  # pylint: disable=g-import-not-at-top
  return jax.process_index() == 0


def process_share(n: int, process_index: int | None = None,
                  process_count: int | None = None) -> tuple[int, int, int]:
  """(lo, hi, per): this process's contiguous rows lo … hi-1 of n, `per` = ceil(n / count) rows
  per process (the last shares may be shorter or empty), in process order."""
  import jax  # pylint: disable=g-import-not-at-top
  index = jax.process_index() if process_index is None else process_index
  count = jax.process_count() if process_count is None else process_count
  per = -(-n // count)
  lo = min(n, index * per)
  return lo, min(n, lo + per), per


def gather_rows(local, n: int, per: int):
  """Every process's share (`process_share`) of an [n, …] numpy array, on every process: the
  shares are padded to `per` rows, all-gathered and trimmed back to n rows."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  if jax.process_count() == 1:
    return local
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  padded = np.zeros((per, *local.shape[1:]), local.dtype)
  padded[:len(local)] = local
  gathered = np.asarray(multihost_utils.process_allgather(padded))  # [count, per, …]
  return gathered.reshape(-1, *local.shape[1:])[:n]


def make_global_batch(local, sharding):
  """Per-process host arrays (pytree) -> global jax.Arrays sharded by `sharding`."""
  import jax  # pylint: disable=g-import-not-at-top
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), local)


def host_copy(tree):
  """Numpy copies of replicated arrays, also of arrays that span other processes' devices
  (process 0 samples the grids and the SR validation on its own devices)."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  return jax.tree.map(lambda a: np.asarray(a.addressable_data(0)), tree)
