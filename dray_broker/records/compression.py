"""Decompression of record batch payloads with a bound: never more than `limit` bytes of output.

A batch says nothing trustworthy about its inflated size (a 1 MB gzip batch can inflate to 1 GiB), so every codec
is read as a stream that stops with InflatedTooLarge as soon as the output passes the limit, having held at most
the limit plus one step (STEP). inflated_size() counts the output without keeping it (the produce path's check);
decompress() returns it.

    gzip    ISA-L's inflater (isal: twice zlib's speed) with max_length, members one after another (as Java's
            GZIPInputStream reads them)
    snappy  a raw block (librdkafka) starts with its uncompressed length, and the decoder makes exactly that many
            bytes or fails; Java's xerial framing (b"\\x82SNAPPY\\x00", two int32 versions, then [int32 length]
            [raw block]...) is a sequence of such blocks. The stated lengths are checked before anything is
            inflated, and inflated_size() returns their sum without inflating.
    lz4     lz4.frame's decompressor with max_length (Kafka's LZ4 is the frame format), frames one after another
    zstd    zstandard's stream reader, frames one after another; the window a frame may ask for is bounded too
            (a decoder allocates it). The reader ends quietly where the data ends: a truncation shows only when
            the first frame states its size (Kafka's clients compress a batch in one go, so it does), otherwise
            as records that do not parse.
"""

from __future__ import annotations

import struct
from typing import Iterator

import cramjam
import lz4.frame
import zstandard
from isal import igzip_lib

NONE, GZIP, SNAPPY, LZ4, ZSTD = 0, 1, 2, 3, 4
CODEC_NAMES = {NONE: "uncompressed", GZIP: "gzip", SNAPPY: "snappy", LZ4: "lz4", ZSTD: "zstd"}
XERIAL_MAGIC = b"\x82SNAPPY\x00"
_XERIAL_HEADER = 16  # magic (8) + version (4) + compatible version (4)
_INT32 = struct.Struct(">i")
STEP = 256 * 1024
# zstd windows a frame may ask for: at least what common producers use (8 MiB is the format's recommended
# minimum for decoders), at most zstandard's default limit.
_ZSTD_MIN_WINDOW = 8 << 20
_ZSTD_MAX_WINDOW = 128 << 20


class DecompressError(ValueError):
    """The compressed bytes cannot be read."""


class InflatedTooLarge(DecompressError):
    def __init__(self, codec: int, limit: int):
        super().__init__(f"{CODEC_NAMES.get(codec, codec)} records inflate to more than {limit} bytes")
        self.limit = limit


def decompress(codec: int, data, limit: int) -> bytes:
    """The records section of a batch, uncompressed; InflatedTooLarge past limit bytes."""
    if codec == NONE:
        if len(data) > limit:
            raise InflatedTooLarge(codec, limit)
        return bytes(data)
    return b"".join(_chunks(codec, data, limit))


def inflated_size(codec: int, data, limit: int) -> int:
    """How many bytes the records section inflates to (at most limit, else InflatedTooLarge)."""
    if codec == NONE:
        size = len(data)
    elif codec == SNAPPY:
        size = sum(n for _, n in _snappy_blocks(data, limit))
    else:
        size = sum(map(len, _chunks(codec, data, limit)))
    if size > limit:
        raise InflatedTooLarge(codec, limit)
    return size


def _chunks(codec: int, data, limit: int) -> Iterator[bytes]:
    """The output in pieces of at most STEP bytes, stopping once it passes limit."""
    if not len(data):
        raise DecompressError(f"{CODEC_NAMES.get(codec, codec)} records hold no compressed data")
    if codec == GZIP:
        pieces = _gzip(data)
    elif codec == SNAPPY:
        pieces = _snappy(data, limit)
    elif codec == LZ4:
        pieces = _lz4(data)
    elif codec == ZSTD:
        pieces = _zstd(data, limit)
    else:
        raise DecompressError(f"unknown compression codec {codec}")
    total = 0
    try:
        for piece in pieces:
            total += len(piece)
            if total > limit:
                raise InflatedTooLarge(codec, limit)
            yield piece
    except DecompressError:
        raise
    except Exception as e:  # each library raises its own error types for corrupt input
        raise DecompressError(f"cannot decompress {CODEC_NAMES[codec]} records: {e}") from None


def _gzip(data) -> Iterator[bytes]:
    rest = bytes(data)
    while rest:
        member = igzip_lib.IgzipDecompressor(flag=igzip_lib.DECOMP_GZIP)
        pending = rest
        while not member.eof:
            piece = member.decompress(pending, STEP)
            pending = b""
            if piece:
                yield piece
            elif member.needs_input:
                raise DecompressError("cannot decompress gzip records: the stream is truncated")
        rest = member.unused_data


def _lz4(data) -> Iterator[bytes]:
    rest = bytes(data)
    while rest:
        frame = lz4.frame.LZ4FrameDecompressor()
        pending = rest
        while not frame.eof:
            piece = frame.decompress(pending, max_length=STEP)
            pending = b""
            if piece:
                yield piece
            elif frame.needs_input and not frame.eof:
                raise DecompressError("cannot decompress lz4 records: the frame is truncated")
        rest = frame.unused_data


def _zstd(data, limit: int) -> Iterator[bytes]:
    data = bytes(data)
    window = min(max(_ZSTD_MIN_WINDOW, limit), _ZSTD_MAX_WINDOW)
    reader = zstandard.ZstdDecompressor(max_window_size=window).stream_reader(data, read_across_frames=True)
    total = 0
    while piece := reader.read(STEP):
        total += len(piece)
        yield piece
    # The reader ends quietly when the data does: a first frame that states its size shows a truncation.
    stated = zstandard.frame_content_size(data)
    if stated >= 0 and total < stated:
        raise DecompressError(f"cannot decompress zstd records: the frame is truncated ({total} of {stated} bytes)")


def _snappy(data, limit: int) -> Iterator[bytes]:
    for block, _ in _snappy_blocks(data, limit):
        yield bytes(cramjam.snappy.decompress_raw(block))


def _snappy_blocks(data, limit: int) -> Iterator[tuple[memoryview, int]]:
    """(raw block, the uncompressed length it states) of each block, all checked against limit first."""
    view = memoryview(data)
    if view[: len(XERIAL_MAGIC)] != XERIAL_MAGIC:
        blocks = [view]
    else:
        blocks = []
        pos = _XERIAL_HEADER
        while pos < len(view):
            if pos + 4 > len(view):
                raise DecompressError("truncated xerial snappy block length")
            (n,) = _INT32.unpack_from(view, pos)
            pos += 4
            if n < 0 or pos + n > len(view):
                raise DecompressError("xerial snappy block runs past the data")
            blocks.append(view[pos : pos + n])
            pos += n
    sized = [(block, _snappy_length(block)) for block in blocks]
    if sum(n for _, n in sized) > limit:
        raise InflatedTooLarge(SNAPPY, limit)
    return iter(sized)


def _snappy_length(block: memoryview) -> int:
    """The uncompressed length a raw snappy block starts with (an unsigned varint of at most 5 bytes)."""
    n = shift = 0
    for i in range(min(5, len(block))):
        b = block[i]
        n |= (b & 0x7F) << shift
        if b < 0x80:
            return n
        shift += 7
    raise DecompressError("cannot decompress snappy records: bad uncompressed length")
