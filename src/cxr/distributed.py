"""Training on several processes: torchrun's environment in, one checked process group out.

`cxr train` runs unchanged under torchrun (one process per GPU, on one machine or several):

    torchrun --nproc_per_node 4 -m cxr.cli train --data ... --batch-size 128 --out runs/x

How the work is shared, and why the result does not depend on the number of processes:

- `train.batch_size` is the GLOBAL batch: each of W processes gets batch_size / W images of
  every batch (the batch size must divide evenly). Every process draws the same permutation
  from the same seeded generator and takes its own contiguous share of each global batch.
- Augmentation parameters are drawn for the whole global batch from that shared generator, as
  one process would draw them; each process reads only its own images (the others' rows stay
  zero) and keeps its own rows. Every augmentation is per-sample, so each image gets exactly
  the augmentation it would get in a single process, and the generator advances identically
  on every rank and for every W: the checkpointed generator state means the same thing at any
  world size, which is what makes resume work across world sizes.
- Each process's mean loss is weighted by its share of the batch before DistributedDataParallel
  averages the gradients, so a step is the single-process step on the whole global batch.
  BatchNorm uses the statistics of the whole global batch too: torch's SyncBatchNorm on GPUs,
  and on CPUs (gloo, where torch has none) GlooSyncBatchNorm below. Measured on the CPU with
  two processes: the same per-step losses as one process to ~1e-6 (float summation order).
- Validation images are split across processes and the predictions gathered in order, so every
  process computes the same metrics; only rank 0 writes the run folder.

Everything that can be checked before training is: the environment variables, the batch size
against the world size, the GPUs against LOCAL_RANK, and, once the processes have met, that
every rank has the same config, data and software. A mismatch is a CxrError on every rank.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
import torch.distributed as dist

from cxr.errors import ConfigError, DataError, DistributedError

T = TypeVar("T")

TIMEOUT_ENV = "CXR_DIST_TIMEOUT_S"
# Long enough for rank 0 to build a large preprocessing cache while the others wait at a
# barrier (NIH's 112k images take tens of minutes); override with CXR_DIST_TIMEOUT_S.
DEFAULT_TIMEOUT_S = 3600


@dataclass(frozen=True)
class World:
    """Where this process sits in the launch (torchrun's RANK, WORLD_SIZE, LOCAL_RANK...)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1
    master_addr: str | None = None
    master_port: int | None = None

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


SINGLE = World()


def world_from_env(env: Mapping[str, str] | None = None) -> World:
    """The launch torchrun (or SLURM + torchrun) described in the environment; SINGLE if none.

    Raises DistributedError naming the variable when the description is incomplete or
    inconsistent, before anything tries to connect.
    """
    env = os.environ if env is None else env
    names = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
    present = [n for n in names if n in env]
    if not present or (present == ["LOCAL_RANK"] and env.get("LOCAL_RANK") == "0"):
        return SINGLE
    size = _int_env(env, "WORLD_SIZE", 1)
    if size == 1 and "RANK" not in env:
        return SINGLE
    missing = [n for n in names if n not in env]
    if missing:
        raise DistributedError(
            f"incomplete distributed launch: {', '.join(present)} set but {', '.join(missing)} "
            "not; launch with torchrun, which sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR "
            "and MASTER_PORT for every process"
        )
    rank = _int_env(env, "RANK", 0)
    local_rank = _int_env(env, "LOCAL_RANK", 0)
    local_size = _int_env(env, "LOCAL_WORLD_SIZE", size)
    if size < 1:
        raise DistributedError(f"WORLD_SIZE must be at least 1, got {size}")
    if not 0 <= rank < size:
        raise DistributedError(f"RANK={rank} is outside 0..{size - 1} (WORLD_SIZE={size})")
    if not 1 <= local_size <= size:
        raise DistributedError(f"LOCAL_WORLD_SIZE={local_size} must lie in 1..WORLD_SIZE ({size})")
    if not 0 <= local_rank < local_size:
        raise DistributedError(
            f"LOCAL_RANK={local_rank} is outside 0..{local_size - 1} "
            f"(LOCAL_WORLD_SIZE={local_size})"
        )
    if size == 1:
        return SINGLE
    addr = env.get("MASTER_ADDR")
    if not addr:
        raise DistributedError("WORLD_SIZE > 1 but MASTER_ADDR is not set: the address of rank 0")
    port = _int_env(env, "MASTER_PORT", 0)
    if not 0 < port < 65536:
        raise DistributedError(f"MASTER_PORT must be a TCP port (1..65535), got {port}")
    return World(rank, size, local_rank, local_size, addr, port)


def _int_env(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        raise DistributedError(f"{name} must be an integer, got {raw!r}") from None


def check_launch(world: World, batch_size: int, device: str) -> None:
    """What can be refused before any process connects: batch split, GPUs for LOCAL_RANK."""
    if not world.distributed:
        return
    if batch_size % world.size:
        raise ConfigError(
            f"train.batch_size {batch_size} is not divisible by WORLD_SIZE {world.size}: the "
            f"global batch is split evenly across processes; use a multiple of {world.size}"
        )
    if device.startswith("cuda:"):
        raise ConfigError(
            f"train.device={device} names one GPU, but a distributed run uses one GPU per "
            "process (GPU = LOCAL_RANK): use train.device=cuda or auto"
        )
    if device in ("cuda", "auto") and torch.cuda.is_available():
        visible = torch.cuda.device_count()
        if world.local_rank >= visible:
            raise DistributedError(
                f"LOCAL_RANK={world.local_rank} but only {visible} GPU(s) are visible on this "
                f"machine: start at most {visible} processes per node (--nproc_per_node)"
            )
    elif device == "cuda":
        raise ConfigError("train.device=cuda but no GPU is visible on this machine")


def device_for(world: World, device: str) -> str:
    """The device string for this process: under torchrun, GPU number LOCAL_RANK."""
    if not world.distributed:
        return device
    if device == "cuda" or (device == "auto" and torch.cuda.is_available()):
        return f"cuda:{world.local_rank}"
    return "cpu" if device == "auto" else device


def setup(world: World, device: str, agree_on: Mapping[str, str]) -> bool:
    """Join the process group (nccl on GPUs, gloo on CPUs) and check that every rank agrees.

    agree_on: name -> value that must be identical on every rank (the config, versions).
    Returns True when this call created the group (so `teardown` should end it).
    """
    if not world.distributed:
        return False
    created = False
    if not dist.is_initialized():
        on_gpu = device.startswith("cuda")
        if on_gpu:
            torch.cuda.set_device(int(device.split(":")[1]))
        raw = os.environ.get(TIMEOUT_ENV, str(DEFAULT_TIMEOUT_S))
        try:
            timeout = timedelta(seconds=float(raw))
        except ValueError:
            raise DistributedError(
                f"{TIMEOUT_ENV} must be a number of seconds, got {raw!r}"
            ) from None
        try:
            dist.init_process_group(
                "nccl" if on_gpu else "gloo",
                init_method="env://",
                rank=world.rank,
                world_size=world.size,
                timeout=timeout,
            )
        except Exception as exc:  # noqa: BLE001 - store/socket errors all mean "could not meet"
            raise DistributedError(
                f"rank {world.rank} could not join the process group at "
                f"{world.master_addr}:{world.master_port} ({exc.__class__.__name__}: {exc}); "
                "check that MASTER_ADDR/MASTER_PORT are reachable and that every node was "
                "started with the same --nnodes and --nproc_per_node"
            ) from None
        created = True
    elif dist.get_world_size() != world.size or dist.get_rank() != world.rank:
        raise DistributedError(
            f"a process group already exists with rank {dist.get_rank()} of "
            f"{dist.get_world_size()}, but the environment says rank {world.rank} of {world.size}"
        )
    try:
        agree(world, dict(agree_on) | {"WORLD_SIZE": str(world.size)})
    except DistributedError:
        if created:
            teardown(True)
        raise
    return created


def teardown(created: bool) -> None:
    if created and dist.is_initialized():
        dist.destroy_process_group()


def barrier(world: World) -> None:
    if world.distributed:
        dist.barrier()


def agree(world: World, values: Mapping[str, str], what: str = "settings") -> None:
    """Raise DistributedError on every rank unless every rank passed the same values.

    JSON values are compared field by field, so the message names e.g. `train.seed`.
    """
    if not world.distributed:
        return
    mine = json.dumps(dict(values), sort_keys=True).encode()
    everyone = [json.loads(raw) for raw in gather_bytes(world, mine)]
    problems = []
    for rank, theirs in enumerate(everyone[1:], start=1):
        for key in sorted(set(everyone[0]) | set(theirs)):
            a, b = everyone[0].get(key), theirs.get(key)
            if a != b:
                fields = _differing_fields(a, b, key)
                problems += [
                    f"{name} is {x!r} on rank 0 but {y!r} on rank {rank}"
                    for name, x, y in fields[:5]
                ]
    if problems:
        raise DistributedError(
            f"the processes of this launch disagree on their {what}: "
            + "; ".join(problems[:8])
            + ". Start every process with the same command, data and software."
        )


def _differing_fields(a, b, prefix: str) -> list[tuple[str, object, object]]:
    """(dotted name, a, b) for each leaf that differs; JSON strings are opened first."""
    try:
        a, b = json.loads(a), json.loads(b)
        prefix = "" if prefix == "config" else prefix
    except (TypeError, ValueError):
        pass
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                name = f"{prefix}.{key}" if prefix else key
                out += _differing_fields(a.get(key), b.get(key), name)
        return out
    return [(prefix, a, b)]


def gather_bytes(world: World, data: bytes) -> list[bytes]:
    """all_gather of a byte string from every rank (any lengths), in rank order; no pickle."""
    if not world.distributed:
        return [data]
    device = _comm_device()
    length = torch.tensor([len(data)], dtype=torch.int64, device=device)
    lengths = [torch.zeros_like(length) for _ in range(world.size)]
    dist.all_gather(lengths, length)
    longest = max(int(n.item()) for n in lengths)
    buf = torch.zeros(longest, dtype=torch.uint8, device=device)
    if data:
        buf[: len(data)] = torch.frombuffer(bytearray(data), dtype=torch.uint8).to(device)
    bufs = [torch.zeros_like(buf) for _ in range(world.size)]
    dist.all_gather(bufs, buf)
    return [bytes(b[: int(n.item())].cpu().numpy()) for b, n in zip(bufs, lengths, strict=True)]


def gather_rows(world: World, array: np.ndarray) -> np.ndarray:
    """Concatenate every rank's (n_r, ...) array in rank order (np.save bytes: no pickle)."""
    if not world.distributed:
        return array
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    parts = gather_bytes(world, buf.getvalue())
    return np.concatenate([np.load(io.BytesIO(p), allow_pickle=False) for p in parts])


def all_reduce_sum(world: World, values: list[float]) -> list[float]:
    if not world.distributed:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=_comm_device())
    dist.all_reduce(t)
    return t.cpu().tolist()


def _comm_device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def share(n: int, world: World) -> slice:
    """This rank's contiguous share of n items (sizes differ by at most one; may be empty)."""
    base, extra = divmod(n, world.size)
    start = world.rank * base + min(world.rank, extra)
    return slice(start, start + base + (1 if world.rank < extra else 0))


def training_batches(n: int, batch_size: int) -> list[slice]:
    """Consecutive batches over n shuffled training images, none smaller than 2: a lone last
    image joins the batch before it, since BatchNorm cannot normalise one image (at small
    sizes the 1x1 maps of layer4 make train-mode BatchNorm raise)."""
    if n < 2:
        raise DataError(f"the training split has {n} image(s): training needs at least 2")
    bounds = list(range(0, n, batch_size)) + [n]
    if n - bounds[-2] == 1 and len(bounds) > 2:
        del bounds[-2]
    return [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def sharded_batches(
    images, batch_size: int, generator: torch.Generator, world: World
) -> Iterator[tuple[torch.Tensor, torch.Tensor, slice]]:
    """`cxr.train.batches` for one rank: (global-size uint8 batch, own labels, own rows).

    The same permutation and global batches as one process; only this rank's rows are read
    from the cache (the others stay zero), so each rank reads 1/W of the data.
    """
    n = len(images.table)
    order = torch.randperm(n, generator=generator).numpy()
    labels = images.table.labels
    for batch in training_batches(n, batch_size):
        index = np.sort(order[batch])
        rows = share(len(index), world)
        x = np.zeros((len(index), *images.pixels.shape[1:]), dtype=np.uint8)
        x[rows] = images.pixels[index[rows]]
        yield torch.from_numpy(x), torch.from_numpy(labels[index[rows]]), rows


def wrap_model(model: torch.nn.Module, world: World, device: torch.device) -> torch.nn.Module:
    """DistributedDataParallel around model (SyncBatchNorm first on GPUs); model itself if one
    process. `model` keeps its parameters, so its state_dict has no 'module.' prefixes."""
    if not world.distributed:
        return model
    if device.type == "cuda":
        torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)  # in place below the root
        return torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index])
    _sync_batchnorm_on_cpu(model)
    return torch.nn.parallel.DistributedDataParallel(model)


class GlooSyncBatchNorm(torch.nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are those of the global batch, over gloo.

    torch.nn.SyncBatchNorm runs only on GPUs; this is the same idea in plain differentiable
    ops for CPU processes: per-channel sums and counts are all-reduced (torch.distributed.nn's
    all_reduce carries gradients back across ranks), mean first and then the centred sum of
    squares (two passes: no E[x^2] - E[x]^2 cancellation). In eval mode it is BatchNorm2d. The
    parameters and buffers are the BatchNorm2d's own, so checkpoints do not change.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(x)
        count = torch.tensor([x.shape[0] * x.shape[2] * x.shape[3]], dtype=x.dtype)
        total = _AllReduceSum.apply(torch.cat([x.sum(dim=(0, 2, 3)), count]))
        n = total[-1]
        mean = total[:-1] / n
        centred = x - mean[None, :, None, None]
        var = _AllReduceSum.apply(centred.pow(2).sum(dim=(0, 2, 3))) / n
        with torch.no_grad():  # as F.batch_norm: unbiased variance in the running estimate
            self.num_batches_tracked.add_(1)
            m = self.momentum
            if m is None:  # cumulative moving average, as BatchNorm2d with momentum=None
                m = 1.0 / float(self.num_batches_tracked)
            self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
            unbiased = var.detach() * (n / (n - 1).clamp(min=1))
            self.running_var.mul_(1 - m).add_(unbiased, alpha=m)
        scale = self.weight / torch.sqrt(var + self.eps)
        return centred * scale[None, :, None, None] + self.bias[None, :, None, None]


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks; the gradient of a sum is the sum of the ranks' gradients."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        out = tensor.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        out = grad.clone()
        dist.all_reduce(out)
        return out


def _sync_batchnorm_on_cpu(model: torch.nn.Module) -> None:
    """Turn every BatchNorm2d below model into GlooSyncBatchNorm, in place, same tensors."""
    for module in model.modules():
        if type(module) is torch.nn.BatchNorm2d and module.affine and module.track_running_stats:
            module.__class__ = GlooSyncBatchNorm


def sync_buffers(model: torch.nn.Module, world: World) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) to every rank before evaluation:
    DDP broadcasts them before each training forward, so after the last step each rank still
    holds its own update, and the saved model is rank 0's."""
    if not world.distributed:
        return
    for buffer in model.buffers():
        dist.broadcast(buffer.data, src=0)


def prepare_in_turn(world: World, run_dir: Path, prepare: Callable[[Path], T]) -> T:
    """Call prepare(folder) on rank 0 first (it writes split.csv into run_dir and builds the
    cache), then on each node's first process, then on the rest, each with a scratch folder:
    one process builds a cache while the others wait, and then find it built."""
    if not world.distributed:
        return prepare(run_dir)
    result = None
    first_on_node = world.rank != 0 and world.local_rank == 0
    for my_turn in (world.is_main, first_on_node, world.local_rank != 0):
        if my_turn:
            if world.is_main:
                result = prepare(run_dir)
            else:
                with tempfile.TemporaryDirectory(prefix="cxr-rank-") as scratch:
                    result = prepare(Path(scratch))
        barrier(world)
    return result
