"""Canonical Huffman coding of integer symbols (Deep Compression's last stage: the weight-sharing indices and
the gaps between non-zero weights, both skewed, coded with fewer bits on average).

Written here because neither the standard library nor factorch's dependencies expose a Huffman coder of
arrays (``zlib``'s DEFLATE adds LZ77 matching and its own framing). Codes are canonical and at most
:data:`MAX_LENGTH` bits long, so a stream is described by its symbols and their code lengths alone, and is
decoded with one table lookup per symbol.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

import numpy as np

MAX_LENGTH = 16


@dataclass(frozen=True)
class HuffmanStream:
    """A coded array: the bits (packed, most significant first), the symbols and their code lengths (the
    canonical code table), and the number of symbols coded."""

    bits: np.ndarray  # uint8
    symbols: np.ndarray  # int64, the alphabet in canonical order
    lengths: np.ndarray  # uint8, code length of each symbol
    count: int


def code_lengths(counts: np.ndarray, max_length: int = MAX_LENGTH) -> np.ndarray:
    """Huffman code lengths for symbol frequencies ``counts`` (all > 0), at most ``max_length`` bits: when the
    optimal code is deeper, the rarest frequencies are raised (halving the spread) until it fits."""
    counts = np.asarray(counts, dtype=np.int64)
    if counts.size == 1:
        return np.ones(1, dtype=np.uint8)
    work = counts.copy()
    while True:
        heap = [(int(c), i, (i,)) for i, c in enumerate(work)]
        heapq.heapify(heap)
        depth = np.zeros(len(work), dtype=np.int64)
        tie = len(work)
        while len(heap) > 1:
            c1, _, a = heapq.heappop(heap)
            c2, _, b = heapq.heappop(heap)
            for i in a + b:
                depth[i] += 1
            heapq.heappush(heap, (c1 + c2, tie, a + b))
            tie += 1
        if depth.max() <= max_length:
            return depth.astype(np.uint8)
        work = (work + 1) // 2 + 1  # flatter frequencies give a shallower tree


def _canonical_codes(lengths: np.ndarray) -> np.ndarray:
    """Canonical code values for ``lengths`` (symbols in table order, sorted by length then position)."""
    order = np.lexsort((np.arange(len(lengths)), lengths))
    codes = np.zeros(len(lengths), dtype=np.int64)
    code, prev = 0, int(lengths[order[0]])
    for k, i in enumerate(order):
        length = int(lengths[i])
        if k:
            code = (code + 1) << (length - prev)
        codes[i], prev = code, length
    return codes


def encode(values: np.ndarray) -> HuffmanStream:
    """``values`` (integers) Huffman-coded."""
    values = np.asarray(values, dtype=np.int64).ravel()
    if values.size == 0:
        return HuffmanStream(np.zeros(0, np.uint8), np.zeros(0, np.int64), np.zeros(0, np.uint8), 0)
    symbols, index, counts = np.unique(values, return_inverse=True, return_counts=True)
    lengths = code_lengths(counts)
    codes = _canonical_codes(lengths)
    width = int(lengths.max())
    # each symbol's code as `width` bits, left-aligned; keep the first `length` of them
    table = ((codes[:, None] << (width - lengths[:, None].astype(np.int64))) >> np.arange(width - 1, -1, -1)) & 1
    bits = table[index]
    keep = np.arange(width)[None, :] < lengths[index][:, None]
    return HuffmanStream(np.packbits(bits[keep].astype(np.uint8)), symbols, lengths, int(values.size))


def decode(stream: HuffmanStream) -> np.ndarray:
    """The integers that :func:`encode` coded."""
    if stream.count == 0:
        return np.zeros(0, dtype=np.int64)
    lengths = stream.lengths.astype(np.int64)
    width = int(lengths.max())
    codes = _canonical_codes(stream.lengths)
    # lookup table on `width`-bit windows: every window starting with a symbol's code maps to it
    lut_symbol = np.zeros(1 << width, dtype=np.int64)
    lut_length = np.zeros(1 << width, dtype=np.int64)
    for i, (code, length) in enumerate(zip(codes, lengths)):
        start = int(code) << (width - int(length))
        span = 1 << (width - int(length))
        lut_symbol[start : start + span] = i
        lut_length[start : start + span] = length
    bits = np.unpackbits(stream.bits).astype(np.int64)
    bits = np.concatenate([bits, np.zeros(width, dtype=np.int64)])
    windows = np.lib.stride_tricks.sliding_window_view(bits, width) @ (1 << np.arange(width - 1, -1, -1))
    windows = windows.tolist()
    sym_of, len_of = lut_symbol.tolist(), lut_length.tolist()
    out = [0] * stream.count
    pos = 0
    for k in range(stream.count):
        w = windows[pos]
        out[k] = sym_of[w]
        pos += len_of[w]
    return stream.symbols[np.asarray(out, dtype=np.int64)]


def coded_bits(values: np.ndarray) -> int:
    """Bits of ``values`` Huffman-coded, the stream alone (for cost accounting)."""
    values = np.asarray(values, dtype=np.int64).ravel()
    if values.size == 0:
        return 0
    _, counts = np.unique(values, return_counts=True)
    return int(np.dot(code_lengths(counts).astype(np.int64), counts))


_HEAD = np.dtype([("count", "<u4"), ("n", "<u4"), ("width", "u1")])


def to_bytes(stream: HuffmanStream) -> bytes:
    """``stream`` serialised: a 9-byte head (symbol count, alphabet size, bytes per alphabet entry), the
    alphabet at the narrowest integer width that holds it, the code lengths, then the bits."""
    symbols = stream.symbols
    if symbols.size and symbols.min() >= 0 and symbols.max() < 1 << 16:
        width, dtype = (1, "<u1") if symbols.max() < 1 << 8 else (2, "<u2")
    else:
        width, dtype = 4, "<i4"
    head = np.array([(stream.count, symbols.size, width)], dtype=_HEAD).tobytes()
    return head + symbols.astype(dtype).tobytes() + stream.lengths.astype(np.uint8).tobytes() + stream.bits.tobytes()


def from_bytes(data: bytes) -> HuffmanStream:
    """The stream that :func:`to_bytes` wrote."""
    head = np.frombuffer(data[: _HEAD.itemsize], dtype=_HEAD)[0]
    count, n, width = int(head["count"]), int(head["n"]), int(head["width"])
    at = _HEAD.itemsize
    symbols = np.frombuffer(data[at : at + width * n], dtype={1: "<u1", 2: "<u2", 4: "<i4"}[width]).astype(np.int64)
    at += width * n
    lengths = np.frombuffer(data[at : at + n], dtype=np.uint8).copy()
    return HuffmanStream(np.frombuffer(data[at + n :], dtype=np.uint8).copy(), symbols, lengths, count)


def stream_tensors(stream: HuffmanStream, prefix: str) -> dict:
    """``stream`` as one uint8 tensor ``<prefix>`` of a state dict (:func:`to_bytes`)."""
    import torch

    return {prefix: torch.from_numpy(np.frombuffer(to_bytes(stream), dtype=np.uint8).copy())}


def stream_from_tensors(state: dict, prefix: str) -> HuffmanStream:
    """The stream that :func:`stream_tensors` stored (its entry removed from ``state``)."""
    return from_bytes(state.pop(prefix).numpy().tobytes())


def _gap_symbols(gaps: np.ndarray, cap: int) -> np.ndarray:
    """Gaps (>= 1) as symbols in ``1..cap``, a longer gap preceded by one ``0`` (skip ``cap`` places) per
    ``cap`` places it exceeds ``cap``: Deep Compression's filler entries, which bound the alphabet."""
    skips = (gaps - 1) // cap
    out = np.zeros(gaps.size + int(skips.sum()), dtype=np.int64)
    ends = np.cumsum(skips + 1) - 1  # where each gap's own symbol lands, after its skips
    out[ends] = gaps - skips * cap
    return out


def encode_positions(mask: np.ndarray) -> tuple[HuffmanStream, int]:
    """The positions of the ``True`` entries of a flat mask as Huffman-coded gaps, and the gap cap: Deep
    Compression's relative indices (the paper fixes the cap at 2^5 or 2^8 places; here the power of two
    whose stream and code table are smallest is chosen per mask)."""
    gaps = np.diff(np.flatnonzero(np.asarray(mask).ravel()), prepend=-1)
    if gaps.size == 0:
        return encode(gaps), 1

    def size(cap: int) -> int:
        symbols = _gap_symbols(gaps, cap)
        return coded_bits(symbols) + 8 * 3 * np.unique(symbols).size  # stream + alphabet and lengths

    cap = min((1 << k for k in range(17)), key=size)
    return encode(_gap_symbols(gaps, cap)), cap


def decode_positions(stream: HuffmanStream, numel: int, cap: int) -> np.ndarray:
    """The flat boolean mask of ``numel`` entries that :func:`encode_positions` coded."""
    symbols = decode(stream)
    ends = np.cumsum(np.where(symbols == 0, cap, symbols)) - 1
    mask = np.zeros(numel, dtype=bool)
    mask[ends[symbols != 0]] = True
    return mask


def position_tensors(mask: np.ndarray, prefix: str) -> dict:
    """A mask's positions (:func:`encode_positions`) as one uint8 tensor: the cap's log2, then the stream."""
    import torch

    stream, cap = encode_positions(mask)
    data = bytes([cap.bit_length() - 1]) + to_bytes(stream)
    return {prefix: torch.from_numpy(np.frombuffer(data, dtype=np.uint8).copy())}


def positions_from_tensors(state: dict, prefix: str, numel: int) -> np.ndarray:
    """The flat mask that :func:`position_tensors` stored (its entry removed from ``state``)."""
    data = state.pop(prefix).numpy().tobytes()
    return decode_positions(from_bytes(data[1:]), numel, 1 << data[0])
