"""The powlab wire format: message envelopes and stream framing (sans-IO).

Envelope
    Every message, on a datagram or a stream, is one msgpack array of exactly four elements::

        [magic, type, payload, checksum]

    magic     bin, 4 bytes: identifies the network; a mismatch is ``bad-magic``.
    type      positive int: the message type number (`p2p.messages.MESSAGE_TYPES`); a number
              not in that table is ``unknown-type``.
    payload   bin: the msgpack encoding of the message's fields as an array, in the order the
              message declares them (see `p2p.messages`).
    checksum  bin, 4 bytes: the first 4 bytes of SHA-256(SHA-256(payload)); a mismatch is
              ``bad-checksum``.

    Only the canonical msgpack encoding is accepted, for the envelope and for the payload: the
    shortest form of every integer, length and array header, ``bin`` (never ``str``) for bytes,
    ``str`` for text, no maps, no extension types, no floats, no trailing bytes. A decoder checks
    this by re-encoding what it parsed and comparing bytes (``malformed`` if they differ), so
    every message has exactly one encoding and its hash identifies it.

Transports
    Every envelope travels encrypted under the peer's session (`p2p.session`,
    `p2p.secure_stream`). Datagram: one envelope per data datagram, which with the session's
    header and tag is at most `MAX_DATAGRAM_SIZE` bytes so it never needs IP fragmentation;
    bigger messages must go on the stream. Stream (TCP): a preamble naming the session, then
    frames of a 4-byte length and the sealed envelope, at most `MAX_MESSAGE_SIZE` plus the tag.

Errors
    Decoding failures raise `p2p.errors.ProtocolError` and nothing else. Checks run in this
    order, the first failure naming the reason: length (``oversize``, before any parsing);
    envelope msgpack (``truncated`` if the input ends mid-object, ``malformed`` for garbage,
    trailing bytes or a wrong shape); ``bad-magic``; ``unknown-type``; ``bad-checksum``;
    canonical envelope (``malformed``); payload msgpack (``truncated``/``malformed``); payload
    fields (``bad-field``); canonical payload (``malformed``).
"""

from __future__ import annotations

from typing import Any

import msgpack

from consensus.hashing import sha256d
from p2p.errors import (
    BAD_CHECKSUM,
    BAD_MAGIC,
    MALFORMED,
    OVERSIZE,
    TRUNCATED,
    UNKNOWN_TYPE,
    ProtocolError,
)
from p2p.messages import (
    MAX_BLOCK_BYTES,
    MAX_LIST_LEN,
    MAX_STRING_CHARS,
    MESSAGE_TYPES,
    Message,
)

MAGIC_SIZE = 4
CHECKSUM_SIZE = 4
MAX_MESSAGE_SIZE = 4 * 1024 * 1024 + 1024  # a maximum block plus envelope overhead
MAX_DATAGRAM_SIZE = 1400  # fits one Ethernet-MTU datagram with IPv6 and UDP headers

# UTF-8 needs at most 4 bytes per character; msgpack limits str length in bytes.
_MAX_STR_BYTES = 4 * MAX_STRING_CHARS

if MAX_MESSAGE_SIZE <= MAX_BLOCK_BYTES:
    raise AssertionError("a maximum-size block must fit in one message")


def checksum(payload: bytes) -> bytes:
    return sha256d(payload)[:CHECKSUM_SIZE]


def _pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def encode_message(magic: bytes, msg: Message) -> bytes:
    """The envelope for `msg`; the caller picks the transport by its length."""
    if len(magic) != MAGIC_SIZE:
        raise ValueError(f"magic must be {MAGIC_SIZE} bytes")
    payload = _pack(msg.to_payload())
    return _pack([bytes(magic), msg.TYPE, payload, checksum(payload)])


def _unpack(data: bytes, *, max_array_len: int, max_str_len: int, what: str) -> Any:
    """Parse exactly one msgpack object filling `data`.

    unpackb (four times cheaper to set up) parses well-formed input; whatever it refuses is
    parsed again by a streaming Unpacker with the same limits, because that one reports running
    out of input as its own exception (OutOfData), where unpackb raises a bare ValueError
    indistinguishable from other garbage except by its message text. The limits are checked
    against declared lengths before allocating, so a hostile length cannot reserve huge buffers.
    """
    try:
        # The fast path for well-formed input; failures are re-parsed below for their reason.
        obj = msgpack.unpackb(
            data, raw=False, use_list=True, max_bin_len=len(data), max_str_len=max_str_len,
            max_array_len=max_array_len, max_map_len=0, max_ext_len=0,
        )
    except Exception:  # classified by the streaming parse below
        pass
    else:
        return obj
    unpacker = msgpack.Unpacker(
        None,
        raw=False,
        use_list=True,
        max_buffer_size=max(len(data), 1),
        max_bin_len=len(data),
        max_str_len=max_str_len,
        max_array_len=max_array_len,
        max_map_len=0,
        max_ext_len=0,
    )
    try:
        unpacker.feed(data)
        obj = unpacker.unpack()
    except msgpack.OutOfData:
        raise ProtocolError(TRUNCATED, f"{what} ends early") from None
    except (ValueError, TypeError, msgpack.UnpackException, RecursionError) as exc:
        # ValueError covers FormatError, StackError, exceeded limits and invalid UTF-8.
        raise ProtocolError(MALFORMED, f"{what}: {str(exc) or type(exc).__name__}") from None
    if unpacker.tell() != len(data):
        raise ProtocolError(MALFORMED, f"{len(data) - unpacker.tell()} trailing bytes after {what}")
    # Only reached if unpackb refused what the streaming parser accepts: refuse it too.
    raise ProtocolError(MALFORMED, f"{what} does not parse as one object")


def decode_message(data: bytes, magic: bytes, max_size: int) -> Message:
    """Parse and fully validate one envelope; raises only `ProtocolError`."""
    if len(data) > max_size:
        raise ProtocolError(OVERSIZE, f"{len(data)} bytes exceeds {max_size}")
    data = bytes(data)
    envelope = _unpack(data, max_array_len=4, max_str_len=0, what="envelope")
    if not isinstance(envelope, list) or len(envelope) != 4:
        raise ProtocolError(MALFORMED, "envelope is not an array of 4 elements")
    got_magic, type_num, payload, check = envelope
    if type(got_magic) is not bytes or len(got_magic) != MAGIC_SIZE:
        raise ProtocolError(MALFORMED, "envelope magic is not 4 bytes")
    if got_magic != magic:
        raise ProtocolError(BAD_MAGIC, f"magic {got_magic.hex()} is not {bytes(magic).hex()}")
    if type(type_num) is not int:
        raise ProtocolError(MALFORMED, "envelope type is not an integer")
    cls = MESSAGE_TYPES.get(type_num)
    if cls is None:
        raise ProtocolError(UNKNOWN_TYPE, f"message type {type_num}")
    if type(payload) is not bytes:
        raise ProtocolError(MALFORMED, "envelope payload is not bytes")
    if type(check) is not bytes or len(check) != CHECKSUM_SIZE:
        raise ProtocolError(MALFORMED, "envelope checksum is not 4 bytes")
    if checksum(payload) != check:
        raise ProtocolError(BAD_CHECKSUM, f"{cls.NAME} payload checksum mismatch")
    if _pack(envelope) != data:
        raise ProtocolError(MALFORMED, "non-canonical envelope encoding")
    fields = _unpack(
        payload,
        max_array_len=MAX_LIST_LEN,
        max_str_len=_MAX_STR_BYTES,
        what=f"{cls.NAME} payload",
    )
    msg = cls.from_payload(fields)
    # Re-encoding from the validated object, not from `fields`, also rejects anything the
    # checkers normalised away.
    if _pack(msg.to_payload()) != payload:
        raise ProtocolError(MALFORMED, f"non-canonical {cls.NAME} payload encoding")
    return msg
