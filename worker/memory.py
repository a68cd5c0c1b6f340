"""How much memory a loaded model holds, and giving memory back after a model is dropped.

Sizes are measured from the weights, never assumed: every tensor storage reachable from
the object is counted once, keyed by where it lives. So components shared by several
objects (a diffusers `from_pipe` variant shares the base pipeline's modules) are counted
once, and a cache can sum storages over all its entries without double counting.

Memory that is not a torch tensor (an OpenVINO compiled model) is declared by the object
holding it, with a `native_bytes()` method (`NativeMemory`); it counts once per object.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import dataclasses
import gc
import logging
import sys
import types
from collections.abc import Iterator, Mapping
from functools import cache
from typing import Any, Protocol, runtime_checkable

import torch

log = logging.getLogger(__name__)

# (device, address of the storage's first byte): the identity of one block of memory.
StorageId = tuple[str, int]

# How deep the walk follows plain attributes; a model wrapper is a few levels at most.
MAX_DEPTH = 6
# Never descended into: values without tensors, and things whose attributes are whole programs.
_LEAVES = (
    str,
    bytes,
    bytearray,
    int,
    float,
    complex,
    bool,
    type(None),
    type,
    types.ModuleType,
    types.FunctionType,
    types.BuiltinFunctionType,
    types.MethodType,
    torch.device,
    torch.dtype,
)


@runtime_checkable
class NativeMemory(Protocol):
    """An object holding memory outside torch; the walk counts it and does not look inside."""

    def native_bytes(self) -> int: ...


def tensors(obj: Any) -> Iterator[torch.Tensor]:
    """Every tensor reachable from `obj`, whatever model family it is.

    The walk, in order of precedence:
    - a tensor is itself;
    - a `torch.nn.Module` gives its parameters and buffers (ControlNets, VAEs, UNets, ...);
    - a mapping gives its values; a list, tuple or set its items;
    - an object with a `components` mapping (a diffusers `DiffusionPipeline`) gives those;
    - any other object gives its dataclass fields or instance attributes: that covers a
      spandrel `ModelDescriptor` (its module), AuraSR (`.upsampler`) and our own wrappers.
    Each object is visited once, at most `MAX_DEPTH` levels down.
    """
    return (t for t in _walk(obj, set(), 0) if isinstance(t, torch.Tensor))


def _walk(obj: Any, seen: set[int], depth: int) -> Iterator[torch.Tensor | NativeMemory]:
    """The walk `tensors` describes, also yielding `NativeMemory` holders (not entered)."""
    if depth > MAX_DEPTH or isinstance(obj, _LEAVES) or id(obj) in seen:
        return
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor | NativeMemory):
        yield obj
    elif isinstance(obj, torch.nn.Module):
        yield from obj.parameters()
        yield from obj.buffers()
    else:
        for child in _children(obj):
            yield from _walk(child, seen, depth + 1)


def _children(obj: Any) -> list[Any]:
    if isinstance(obj, Mapping):
        return list(obj.values())
    if isinstance(obj, list | tuple | set | frozenset):
        return list(obj)
    components = getattr(obj, "components", None)
    if isinstance(components, Mapping):
        return list(components.values())
    if dataclasses.is_dataclass(obj):
        return [getattr(obj, f.name, None) for f in dataclasses.fields(obj)]
    return list(getattr(obj, "__dict__", {}).values())


def storage_sizes(obj: Any) -> dict[StorageId, int]:
    """Bytes of each distinct tensor storage reachable from `obj` (see `tensors`), and of
    each `NativeMemory` holder (keyed ("native", id))."""
    sizes: dict[StorageId, int] = {}
    for t in _walk(obj, set(), 0):
        if not isinstance(t, torch.Tensor):
            sizes[("native", id(t))] = t.native_bytes()
            continue
        if t.device.type == "meta":  # no memory behind it
            continue
        try:
            storage = t.untyped_storage()
            sizes[(str(t.device), storage.data_ptr())] = storage.nbytes()
        except (RuntimeError, NotImplementedError):
            # A tensor subclass without a plain storage: count its elements, by identity.
            sizes[(str(t.device), id(t))] = t.nelement() * t.element_size()
    return sizes


def measure_bytes(obj: Any) -> int:
    """Bytes of weights `obj` holds, each storage counted once."""
    return sum(storage_sizes(obj).values())


@cache
def _malloc_trim() -> Any:
    """glibc's `malloc_trim`, or None elsewhere (macOS, musl, Windows)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc.malloc_trim
    except (OSError, AttributeError):
        return None


def release_memory() -> None:
    """Give freed model memory back to the system, after the last reference is dropped.

    Reference cycles (common in pipelines) keep models alive until the collector runs;
    the CUDA caching allocator keeps freed blocks for reuse; and glibc keeps freed heap
    pages in its arenas, so without `malloc_trim` the process RSS never goes down.
    """
    gc.collect()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
