"""A peer's TCP stream under keys from its datagram session (sans-IO framing and AEAD).

The dialler opens the stream with a clear-text preamble, then authenticated frames:

    preamble: magic (4) ‖ the listener's session index (4, big-endian) ‖ stream nonce (16)
    frame:    length of the ciphertext (4, big-endian) ‖ ChaCha20-Poly1305(envelope)

The two directions' keys are HMAC-SHA256(session stream secret, nonce ‖ direction), so every
stream has keys of its own and a peer that replays an old preamble gets nowhere: the listener
refuses a nonce it has seen on that session. The AEAD nonce is the frame's number on the
stream, the length prefix is its associated data, and every `REKEY_FRAMES` frames each side
replaces its key by a hash of it (BIP324 rekeys the same way), so a key learnt later does not
open earlier frames.

Before its first frame authenticates, a stream is a stranger: the listener reads only the
preamble and one frame of at most `PREAUTH_MAX_FRAME` bytes from it, so an unauthenticated
connection can make us buffer a few dozen bytes, never a 4 MiB frame. The dialler's first frame
is an empty one for exactly that reason.
"""

from __future__ import annotations

import hashlib
import hmac
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from p2p.errors import AUTH_FAILED, BAD_MAGIC, OVERSIZE, ProtocolError

PREAMBLE = struct.Struct(">4sI16s")
LENGTH = struct.Struct(">I")
STREAM_NONCE_SIZE = 16
TAG_SIZE = 16
REKEY_FRAMES = 1024
PREAUTH_MAX_FRAME = LENGTH.size + TAG_SIZE  # the dialler's empty first frame
DIALLER_TO_LISTENER = b"\x01"
LISTENER_TO_DIALLER = b"\x02"


def stream_keys(stream_secret: bytes, nonce: bytes) -> tuple[bytes, bytes]:
    """(dialler → listener, listener → dialler) keys of the stream opened with `nonce`."""
    return (
        hmac.new(stream_secret, nonce + DIALLER_TO_LISTENER, hashlib.sha256).digest(),
        hmac.new(stream_secret, nonce + LISTENER_TO_DIALLER, hashlib.sha256).digest(),
    )


class _Direction:
    """One direction's key and frame counter, ratcheting forward every `REKEY_FRAMES`."""

    __slots__ = ("_aead", "counter", "key")

    def __init__(self, key: bytes) -> None:
        self.key = key
        self._aead = ChaCha20Poly1305(key)
        self.counter = 0

    def _nonce(self) -> bytes:
        return b"\x00\x00\x00\x00" + self.counter.to_bytes(8, "little")

    def _advance(self) -> None:
        self.counter += 1
        if self.counter % REKEY_FRAMES == 0:
            self.key = hmac.new(self.key, b"powlab-stream-rekey", hashlib.sha256).digest()
            self._aead = ChaCha20Poly1305(self.key)

    def seal(self, ad: bytes, plaintext: bytes) -> bytes:
        sealed = self._aead.encrypt(self._nonce(), plaintext, ad)
        self._advance()
        return sealed

    def open(self, ad: bytes, ciphertext: bytes) -> bytes:
        try:
            plain = self._aead.decrypt(self._nonce(), ciphertext, ad)
        except InvalidTag:
            raise ProtocolError(AUTH_FAILED, "stream frame failed authentication") from None
        self._advance()
        return plain


class StreamCipher:
    """Seals outgoing envelopes into frames and opens incoming frames into envelopes."""

    def __init__(self, send_key: bytes, recv_key: bytes, max_frame: int) -> None:
        self._send = _Direction(send_key)
        self._recv = _Direction(recv_key)
        self.max_frame = max_frame  # largest ciphertext accepted once authenticated
        self.authenticated = False  # a frame from the other side has verified
        self._buf = bytearray()
        self._error: ProtocolError | None = None

    @classmethod
    def for_dialler(cls, secret: bytes, nonce: bytes, max_frame: int) -> StreamCipher:
        out, back = stream_keys(secret, nonce)
        cipher = cls(out, back, max_frame)
        cipher.authenticated = True  # we dialled it: every frame must still verify, at any size
        return cipher

    @classmethod
    def for_listener(cls, secret: bytes, nonce: bytes, max_frame: int) -> StreamCipher:
        into, back = stream_keys(secret, nonce)
        return cls(back, into, max_frame)

    def seal(self, envelope: bytes) -> bytes:
        length = LENGTH.pack(len(envelope) + TAG_SIZE)
        return length + self._send.seal(length, envelope)

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> list[bytes]:
        """Envelopes completed by `data`. Raises ProtocolError (then always again): a stream
        that failed cannot be resynchronised and must be closed."""
        if self._error is not None:
            raise self._error
        self._buf += data
        out: list[bytes] = []
        pos = 0
        try:
            while len(self._buf) - pos >= LENGTH.size:
                (length,) = LENGTH.unpack_from(self._buf, pos)
                limit = self.max_frame if self.authenticated else PREAUTH_MAX_FRAME
                if length > limit or length < TAG_SIZE:
                    raise ProtocolError(OVERSIZE, f"frame of {length} bytes (limit {limit})")
                end = pos + LENGTH.size + length
                if end > len(self._buf):
                    break
                ad = bytes(self._buf[pos : pos + LENGTH.size])
                plain = self._recv.open(ad, bytes(self._buf[pos + LENGTH.size : end]))
                self.authenticated = True
                pos = end
                if plain:  # empty frames only prove the keys
                    out.append(plain)
        except ProtocolError as exc:
            self._error = exc
            del self._buf[:]
            raise
        del self._buf[:pos]
        return out


class PreambleReader:
    """The listener's side before the preamble is complete: buffers at most its 24 bytes."""

    def __init__(self, magic: bytes) -> None:
        self.magic = magic
        self._buf = b""

    def feed(self, data: bytes) -> tuple[tuple[int, bytes], bytes] | None:
        """((session index, stream nonce), the bytes after the preamble) once complete."""
        self._buf += data
        if len(self._buf) < PREAMBLE.size:
            return None
        magic, index, nonce = PREAMBLE.unpack_from(self._buf)
        if magic != self.magic:
            raise ProtocolError(BAD_MAGIC, "stream preamble from another network")
        rest = self._buf[PREAMBLE.size :]
        self._buf = b""
        return (index, nonce), rest


def preamble(magic: bytes, their_index: int, nonce: bytes) -> bytes:
    return PREAMBLE.pack(magic, their_index, nonce)
