"""Counting host reads of tensor values on any device: a CPU stand-in for CUDA's sync-debug mode.

On a GPU, each read of a tensor value by the host waits for the device to finish the work queued
before it (a host-device synchronisation). The reads are of two kinds:

- Python-level: ``.item()``, ``bool(t)``, ``float(t)``, ``int(t)``, ``operator.index(t)``,
  ``.tolist()``, ``.numpy()``, ``.cpu()``;
- operator-level: ATen operators that read values in C++ (``aten._local_scalar_dense``, which
  ``.item()`` and friends become, ``aten.equal``), whose output size depends on the values
  (``nonzero``, ``masked_select``, ``unique``, boolean-mask indexing, ``repeat_interleave``
  without ``output_size``, ``bincount``), or that copy a device tensor to the host.

:func:`count_host_reads` counts both kinds while its block runs, by wrapping the Python methods
and pushing a dispatch mode that sees every ATen operator (backward included). On a CPU nothing
waits, but the same code on a GPU would: a count of zero on CPU is what
``torch.cuda.set_sync_debug_mode`` later confirms on the device (``benchmarks/train_step.py``
prints both). A read counted at the Python level is not counted again through the operator it
calls. Not seen: reads inside C++ kernels that do not go through the dispatcher (compiled
inductor code, some CUDA kernels' internal size computations), explicit
``torch.cuda.synchronize`` calls, and pinned-memory waits.

The wrapped methods are the process's: reads by other threads while the block runs count too.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator

import torch
from torch.utils._python_dispatch import TorchDispatchMode

READ_METHODS = ("item", "tolist", "numpy", "cpu", "__bool__", "__float__", "__int__", "__index__", "__complex__")
"""Tensor methods that hand a value (or a host copy) to Python."""

_aten = torch.ops.aten
_VALUE_DEPENDENT_OPS = {
    _aten._local_scalar_dense.default,
    _aten.equal.default,
    _aten.is_nonzero.default,
    _aten.nonzero.default,
    _aten.masked_select.default,
    _aten._unique.default,
    _aten._unique2.default,
    _aten.unique_dim.default,
    _aten.unique_consecutive.default,
    _aten.unique_dim_consecutive.default,
    _aten.bincount.default,
}
"""Operators that always read values on the host (or size their output from them)."""

_INDEX_OPS = {_aten.index.Tensor, _aten.index_put.default, _aten.index_put_.default, _aten._index_put_impl_.default}


class HostReads(Counter):
    """Host reads by name (``Tensor.item``, ``aten.nonzero.default``, ...); ``total`` sums them."""

    @property
    def total(self) -> int:
        return sum(self.values())


def _reads_values(func, args: tuple, kwargs: dict) -> bool:
    """Whether one ATen call reads tensor values on the host."""
    if func in _VALUE_DEPENDENT_OPS:
        return True
    if func in _INDEX_OPS:
        # A boolean mask is turned into indices with nonzero, whose size depends on the mask.
        indices = args[1] if len(args) > 1 else kwargs.get("indices", ())
        return any(i is not None and i.dtype in (torch.bool, torch.uint8) for i in indices)
    if func is _aten.repeat_interleave.Tensor:
        return kwargs.get("output_size") is None
    if func is _aten._to_copy.default:
        target = kwargs.get("device")
        return target is not None and torch.device(target).type == "cpu" and args[0].device.type != "cpu"
    if func in (_aten.copy_.default, _aten.copy.default):
        return args[0].device.type == "cpu" and args[1].device.type != "cpu"
    return False


class _OperatorReads(TorchDispatchMode):
    def __init__(self, counts: HostReads, inside_method: list[int]) -> None:
        super().__init__()
        self.counts = counts
        self.inside_method = inside_method

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if not self.inside_method[0] and _reads_values(func, args, kwargs):
            self.counts[f"aten.{func.__name__}"] += 1
        return func(*args, **kwargs)


@contextlib.contextmanager
def count_host_reads() -> Iterator[HostReads]:
    """Count the host reads of tensor values made while the block runs.

    ::

        with count_host_reads() as reads:
            train_iteration(state, batch, i, generator)
        assert reads.total == 0, dict(reads)
    """
    counts = HostReads()
    inside_method = [0]  # depth of wrapped method calls: their own operator reads are not counted twice
    saved = {name: torch.Tensor.__dict__.get(name) for name in READ_METHODS}

    def wrap(name: str):
        original = getattr(torch.Tensor, name)

        def read(self, *args, **kwargs):
            if not inside_method[0]:
                counts[f"Tensor.{name}"] += 1
            inside_method[0] += 1
            try:
                return original(self, *args, **kwargs)
            finally:
                inside_method[0] -= 1

        return read

    for name in READ_METHODS:
        setattr(torch.Tensor, name, wrap(name))
    try:
        with _OperatorReads(counts, inside_method):
            yield counts
    finally:
        for name, value in saved.items():
            if value is None:
                delattr(torch.Tensor, name)
            else:
                setattr(torch.Tensor, name, value)
