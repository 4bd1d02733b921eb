"""Tensor helpers that several subsystems share, written once: FSDP2's DTensors, raw bits, fingerprints, storages.

* DTensor: :func:`is_dtensor` (without importing ``torch.distributed``), :func:`gathered` (the full tensor, a
  collective) and :func:`to_local` (this rank's shard).
* Raw bits: :func:`int_view` sees a tensor's bits as integers of the same width, so comparisons are exact and
  NaN- and sign-aware (``-0.0`` differs from ``0.0``, an unchanged NaN does not); :func:`bits` gives one row
  per element.
* Prints of a tensor's bits: :func:`fingerprint`, two fixed, public, linear 64-bit weighted sums on the tensor's
  device (cheap, catches accidents, not tampering), and :func:`digest`, a keyed BLAKE2b on the host.
* :func:`storage_key`: which storage a tensor's bytes live in, to count each storage once.

>>> import torch
>>> x = torch.tensor([0.0, -0.0, float("nan")])
>>> bool((bits(x)[0] == bits(x)[1]).all()), bool(torch.equal(bits(x), bits(x.clone())))
(False, True)
>>> torch.equal(fingerprint(x), fingerprint(x.clone())), digest(x, b"k") == digest(-x, b"k")
(True, False)
"""

from __future__ import annotations

import hashlib
import sys
from typing import TYPE_CHECKING, Any, TypeGuard

import torch
from torch import Tensor

if TYPE_CHECKING:
    from torch.distributed.tensor import DTensor

INT_OF_SIZE = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}  # same-width integer, by bytes
_CHUNK = 1 << 20  # elements summed at once by a fingerprint: bounds its temporary memory (~40 MiB)
_HOST_CHUNK = 16 << 20  # bytes copied to the host at once for a digest: bounds its host memory


# -- DTensor (FSDP2's shards) -------------------------------------------------------------------------------------
def is_dtensor(tensor: Any) -> TypeGuard[DTensor]:
    """Whether ``tensor`` is a DTensor; never imports ``torch.distributed.tensor``."""
    dtensor = sys.modules.get("torch.distributed.tensor")  # not imported: no DTensor can exist
    return dtensor is not None and isinstance(tensor, dtensor.DTensor)


def gathered(tensor: Tensor) -> Tensor:
    """The full tensor of a DTensor (a collective), any other tensor as it is."""
    return tensor.full_tensor() if is_dtensor(tensor) else tensor


def to_local(tensor: Tensor) -> Tensor:
    """This rank's shard of a DTensor (no communication), any other tensor as it is."""
    return tensor.to_local() if is_dtensor(tensor) else tensor


# -- raw bits -----------------------------------------------------------------------------------------------------
def int_view(t: Tensor, widest: int = 8) -> Tensor:
    """``t``'s raw bits as integers of the same width (a complex tensor as its real and imaginary parts, bool as
    uint8), detached. A view: later writes to ``t`` show through it.

    With ``widest=4`` an 8-byte element becomes two int32 along a new or the last dimension (a 0-d tensor of
    them becomes 1-D), for arithmetic that must not overflow 64 bits.
    """
    t = t.detach()
    if t.is_complex():
        t = torch.view_as_real(t)
    if t.element_size() > widest:
        if t.dim() == 0:
            t = t.view(1)
        if t.stride(-1) != 1:
            t = t.unsqueeze(-1)  # viewing as a narrower dtype widens the last dimension, which needs stride 1
    return t.view(INT_OF_SIZE[min(t.element_size(), widest)])


def bits(t: Tensor) -> Tensor:
    """The raw bits of ``t`` as integers, one row per element (two for a complex element)."""
    return int_view(t).reshape(t.numel(), -1)


def digest(t: Tensor, key: bytes, size: int = 32) -> bytes:
    """Keyed BLAKE2b (``size`` bytes) of ``t``'s raw bytes. Hashing runs on the host: the bytes are copied there in
    16 MiB pieces (a no-op on CPU), so it is for snapshots and audits, never for a training step."""
    flat = t.detach().reshape(-1)
    if flat.is_complex():
        flat = torch.view_as_real(flat).reshape(-1)
    raw = flat.contiguous().view(torch.uint8)
    h = hashlib.blake2b(key=key, digest_size=size)
    for start in range(0, raw.numel(), _HOST_CHUNK):
        # an ndarray is a buffer; numpy's stubs say so only for Python >= 3.12 (mypy checks 3.11 here)
        h.update(raw[start:start + _HOST_CHUNK].cpu().numpy())  # type: ignore[arg-type]
    return h.digest()


# -- fingerprints: two weighted sums of the bits, mod 2**64 -------------------------------------------------------
_MASK = (1 << 64) - 1


def wrap_int64(x: int) -> int:
    """``x`` as int64 arithmetic holds it: modulo 2**64, signed."""
    x &= _MASK
    return x - (1 << 64) if x >= 1 << 63 else x


_GOLDEN, _MIX1, _MIX2 = (wrap_int64(c) for c in (0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB))


class FingerprintWeights:
    """Odd pseudo-random weights per position within a chunk, made once per device and reused by every
    :func:`fingerprint` that is given this object (one snapshot, check or audit)."""

    def __init__(self) -> None:
        self._made: dict[torch.device, tuple[Tensor, Tensor]] = {}

    def get(self, n: int, device: torch.device) -> tuple[Tensor, Tensor]:
        made = self._made.get(device)
        if made is None or made[0].numel() < n:
            index = torch.arange(max(n, 1024), dtype=torch.int64, device=device)
            made = self._made[device] = (_splitmix(index, 2), _splitmix(index, 4))
        return made[0][:n], made[1][:n]


def fingerprint(t: Tensor, weights: FingerprintWeights | None = None) -> Tensor:
    """Two weighted sums, mod 2**64, of the raw bits with odd pseudo-random weights (splitmix64 of the position),
    as an int64 tensor of two elements on ``t``'s device (no host sync).

    Every weight is odd, so changing any one element changes both sums; the sums are exact integer arithmetic,
    so the result does not depend on reduction order or device. It is linear and its weights are public: a
    change crafted to cancel (12 elements of a few hundred ulp) passes.
    """
    weights = weights or FingerprintWeights()
    flat = bits(t).reshape(-1)
    out = torch.zeros(2, dtype=torch.int64, device=t.device)
    for chunk_index, start in enumerate(range(0, flat.numel(), _CHUNK)):
        chunk = flat[start:start + _CHUNK]
        for k, w in enumerate(weights.get(chunk.numel(), t.device)):  # chunk * w promotes to int64
            # position weight = (weight within the chunk) * (odd weight of the chunk): odd, and cheap to make
            out[k] += (chunk * w).sum() * _mix(chunk_index, 2 * k + 1)
    return out


def _mix(x: int, seed: int) -> int:
    """splitmix64 of ``x``, made odd, as a signed 64-bit int (for chunk weights)."""
    z = (x + seed * 0x9E3779B97F4A7C15) & _MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
    return wrap_int64((z ^ (z >> 31)) | 1)


def _splitmix(index: Tensor, seed: int) -> Tensor:
    # int64 arithmetic wraps around, which is what the mod-2**64 mix needs; >> is arithmetic, so mask it logical
    z = index * _GOLDEN + wrap_int64(seed * 0x9E3779B97F4A7C15)
    z = (z ^ ((z >> 30) & ((1 << 34) - 1))) * _MIX1
    z = (z ^ ((z >> 27) & ((1 << 37) - 1))) * _MIX2
    return (z ^ ((z >> 31) & ((1 << 33) - 1))) | 1


# -- storages -----------------------------------------------------------------------------------------------------
def storage_key(t: Tensor) -> tuple[int, int] | None:
    """(address, bytes) of ``t``'s storage, or None for tensors without one we can read (sparse, nested,
    functional wrappers, some subclasses)."""
    try:
        storage = t.untyped_storage()
        return storage.data_ptr(), storage.nbytes()
    except (RuntimeError, NotImplementedError, TypeError):
        return None


def put(target: Tensor, dim: int | None, index: Tensor, values: Tensor) -> None:
    """``target[index along dim] = values`` in place (flat row-major element indices when ``dim`` is None)."""
    if dim is None:
        target.put_(index, values.reshape(-1))
    else:
        target.index_copy_(dim, index, values)


def take(source: Tensor, dim: int | None, index: Tensor) -> Tensor:
    """``source[index along dim]`` (flat row-major element indices when ``dim`` is None)."""
    return torch.take(source, index) if dim is None else source.index_select(dim, index)
