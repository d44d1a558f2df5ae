"""Noise Protocol Framework, pattern XX, suite ``Noise_XX_25519_ChaChaPoly_SHA256``.

A sans-IO implementation of revision 34 of the Noise specification
(https://noiseprotocol.org/noise.html). It has no clock, no sockets and no
global state: the caller moves bytes between two :class:`HandshakeState`
objects and, once the handshake is complete, uses the two
:class:`CipherState` objects returned by :meth:`HandshakeState.split`.

Only what XX needs is implemented (no PSKs, no pre-messages, no fallback).
Section numbers in the docstrings refer to the spec.

Handshake pattern (section 7.5)::

    XX:
      -> e
      <- e, ee, s, es
      -> s, se

Security note inherent to XX: message 1 is not authenticated at all, so a
tampered message 1 is only detected when the initiator reads message 2 (the
transcript hashes then differ). Peer identity is only established by the
caller checking :attr:`HandshakeState.remote_static` after the handshake.
"""

from __future__ import annotations

import hashlib
import hmac
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

__all__ = [
    "DHLEN",
    "HASHLEN",
    "MAX_MESSAGE_LEN",
    "MAX_NONCE",
    "PROTOCOL_NAME",
    "TAGLEN",
    "CipherState",
    "HandshakeState",
    "NoiseError",
]

PROTOCOL_NAME = b"Noise_XX_25519_ChaChaPoly_SHA256"
DHLEN = 32  # section 12.1: X25519 public keys and DH outputs are 32 bytes
TAGLEN = 16  # section 5: AEAD authentication tag length
HASHLEN = 32  # section 12.5: SHA-256
MAX_NONCE = 2**64 - 1  # section 5.1: reserved, never used for a normal message
MAX_MESSAGE_LEN = 65535  # section 3: every Noise message is at most 65535 bytes

_KEYLEN = 32
# Section 12.3: ChaChaPoly's 96-bit nonce is 32 bits of zeros followed by the
# little-endian 64-bit counter. A precompiled Struct is the cheapest encoding.
_NONCE = struct.Struct("<4xQ")
_ZEROS32 = bytes(32)

# The XX message patterns (section 7.5). Pre-messages: none.
_PATTERN: tuple[tuple[str, ...], ...] = (
    ("e",),
    ("e", "ee", "s", "es"),
    ("s", "se"),
)


class NoiseError(Exception):
    """Any handshake or decryption failure: bad tag, bad length, bad state, bad key."""


# --- Crypto functions (section 4) -------------------------------------------------------


def _hash(data: bytes) -> bytes:
    """HASH(data), section 12.5 (SHA-256)."""
    return hashlib.sha256(data).digest()


def _hmac_hash(key: bytes, data: bytes) -> bytes:
    """HMAC-HASH(key, data) from RFC 2104, section 4.3."""
    return hmac.digest(key, data, "sha256")


def _hkdf(chaining_key: bytes, input_key_material: bytes, num_outputs: int) -> tuple[bytes, ...]:
    """HKDF(chaining_key, input_key_material, num_outputs), section 4.3.

    This is the Noise-specific HKDF (RFC 5869 with an empty info and the
    chaining key as salt), returning 2 or 3 HASHLEN-byte outputs.
    """
    if num_outputs not in (2, 3):
        raise ValueError("num_outputs must be 2 or 3")
    temp_key = _hmac_hash(chaining_key, input_key_material)
    output1 = _hmac_hash(temp_key, b"\x01")
    output2 = _hmac_hash(temp_key, output1 + b"\x02")
    if num_outputs == 2:
        return output1, output2
    output3 = _hmac_hash(temp_key, output2 + b"\x03")
    return output1, output2, output3


def _private_key(raw: bytes, what: str) -> X25519PrivateKey:
    if not isinstance(raw, bytes | bytearray | memoryview) or len(raw) != DHLEN:
        raise ValueError(f"{what} must be {DHLEN} raw bytes")
    return X25519PrivateKey.from_private_bytes(bytes(raw))


def _dh(private: X25519PrivateKey, public: bytes) -> bytes:
    """DH(key_pair, public_key), section 4.1 / 12.1 (X25519, RFC 7748).

    ``cryptography`` refuses an all-zero shared secret (a low-order peer
    point). Section 12.1 allows rejecting those; we do, so that a peer cannot
    force a known "shared" secret on us.
    """
    try:
        return private.exchange(X25519PublicKey.from_public_bytes(public))
    except ValueError as exc:  # wrong length or all-zero (low-order) result
        raise NoiseError(f"invalid DH public key: {exc}") from None


# A throwaway key used only to test remote public keys for low order: X25519
# with any clamped scalar yields all zeros exactly when the point lies in the
# small-order subgroup (the scalar is a multiple of the cofactor 8), whatever
# the scalar, so the result says nothing about any real key.
_PROBE_KEY = X25519PrivateKey.generate()


def _check_public(public: bytes) -> None:
    """Raise NoiseError if ``public`` is a low-order X25519 point (section 12.1)."""
    _dh(_PROBE_KEY, public)


def _public_bytes(private: X25519PrivateKey) -> bytes:
    return private.public_key().public_bytes_raw()


# --- CipherState (section 5.1) ----------------------------------------------------------


class CipherState:
    """CipherState, section 5.1, with ChaChaPoly (section 12.3) as the cipher.

    ``key`` is ``None`` for the spec's "empty" k, in which case
    :meth:`encrypt_with_ad` / :meth:`decrypt_with_ad` pass data through
    unchanged. The ChaCha20Poly1305 object is built once per key (assigning
    ``key`` rebuilds it) because transport encryption runs on every datagram.
    """

    __slots__ = ("_aead", "_key", "n")

    def __init__(self, key: bytes | None = None) -> None:
        self._key: bytes | None = None
        self._aead: ChaCha20Poly1305 | None = None
        self.n = 0
        self.key = key  # InitializeKey(key): sets k and n = 0

    @property
    def key(self) -> bytes | None:
        return self._key

    @key.setter
    def key(self, key: bytes | None) -> None:
        if key is None:
            self._key, self._aead = None, None
            return
        if len(key) != _KEYLEN:
            raise ValueError(f"cipher key must be {_KEYLEN} bytes")
        self._key = bytes(key)
        self._aead = ChaCha20Poly1305(self._key)

    def has_key(self) -> bool:
        """HasKey(), section 5.1."""
        return self._key is not None

    def encrypt_with_ad(self, ad: bytes, plaintext: bytes) -> bytes:
        """EncryptWithAd(ad, plaintext), section 5.1: uses n, then increments it."""
        aead = self._aead
        if aead is None:
            return bytes(plaintext)
        n = self.n
        # n == MAX_NONCE is reserved (for REKEY); reaching it means the
        # session is exhausted and must not encrypt any more (section 5.1).
        if n >= MAX_NONCE:
            raise NoiseError("nonce exhausted")
        ciphertext = aead.encrypt(_NONCE.pack(n), plaintext, ad)
        self.n = n + 1
        return ciphertext

    def decrypt_with_ad(self, ad: bytes, ciphertext: bytes) -> bytes:
        """DecryptWithAd(ad, ciphertext), section 5.1.

        n is incremented only when authentication succeeded, so a forged
        message does not desynchronise the two sides.
        """
        aead = self._aead
        if aead is None:
            return bytes(ciphertext)
        n = self.n
        if n >= MAX_NONCE:
            raise NoiseError("nonce exhausted")
        plaintext = self._open(aead, n, ad, ciphertext)
        self.n = n + 1
        return plaintext

    def encrypt_at(self, nonce: int, ad: bytes, plaintext: bytes) -> bytes:
        """ENCRYPT(k, nonce, ad, plaintext) with an explicit nonce (section 12.3).

        For transport messages whose counter travels on the wire (as in
        WireGuard); ``n`` is neither read nor changed. The caller must never
        reuse a nonce with the same key, and must use a replay window on the
        receiving side.
        """
        aead = self._aead
        if aead is None:
            raise NoiseError("no key")
        if not 0 <= nonce < MAX_NONCE:
            raise NoiseError("nonce out of range")
        return aead.encrypt(_NONCE.pack(nonce), plaintext, ad)

    def decrypt_at(self, nonce: int, ad: bytes, ciphertext: bytes) -> bytes:
        """DECRYPT(k, nonce, ad, ciphertext) with an explicit nonce; raises NoiseError."""
        aead = self._aead
        if aead is None:
            raise NoiseError("no key")
        if not 0 <= nonce < MAX_NONCE:
            raise NoiseError("nonce out of range")
        return self._open(aead, nonce, ad, ciphertext)

    @staticmethod
    def _open(aead: ChaCha20Poly1305, nonce: int, ad: bytes, ciphertext: bytes) -> bytes:
        # A ciphertext shorter than the tag can never be authentic; checking
        # here keeps cryptography's own length errors out of the picture.
        if len(ciphertext) < TAGLEN:
            raise NoiseError("ciphertext shorter than the tag")
        try:
            return aead.decrypt(_NONCE.pack(nonce), ciphertext, ad)
        except (InvalidTag, ValueError, OverflowError):
            raise NoiseError("decryption failed") from None

    def rekey(self) -> None:
        """Rekey(), section 5.1, using the default REKEY of section 4.2.

        k = ENCRYPT(k, maxnonce, zerolen, zeros)[:32]. The nonce counter is
        deliberately left unchanged, as the spec says.
        """
        aead = self._aead
        if aead is None:
            raise NoiseError("no key")
        self.key = aead.encrypt(_NONCE.pack(MAX_NONCE), _ZEROS32, b"")[:_KEYLEN]

    def __repr__(self) -> str:  # never show key material
        return f"CipherState(has_key={self.has_key()}, n={self.n})"


# --- SymmetricState (section 5.2) -------------------------------------------------------


class _SymmetricState:
    """SymmetricState, section 5.2: chaining key ck, handshake hash h, and a CipherState."""

    __slots__ = ("cipher", "ck", "h")

    def __init__(self, protocol_name: bytes) -> None:
        # InitializeSymmetric(protocol_name): pad to HASHLEN if short enough,
        # otherwise hash it. Our 32-byte name is used as-is.
        if len(protocol_name) <= HASHLEN:
            self.h = protocol_name.ljust(HASHLEN, b"\x00")
        else:
            self.h = _hash(protocol_name)
        self.ck = self.h
        self.cipher = CipherState()

    def mix_key(self, input_key_material: bytes) -> None:
        """MixKey(ikm), section 5.2. HASHLEN is 32, so temp_k needs no truncation."""
        self.ck, temp_k = _hkdf(self.ck, input_key_material, 2)
        self.cipher = CipherState(temp_k)

    def mix_hash(self, data: bytes) -> None:
        """MixHash(data), section 5.2: h = HASH(h || data)."""
        self.h = _hash(self.h + data)

    def encrypt_and_hash(self, plaintext: bytes) -> bytes:
        """EncryptAndHash(plaintext), section 5.2: h is the associated data."""
        ciphertext = self.cipher.encrypt_with_ad(self.h, plaintext)
        self.mix_hash(ciphertext)
        return ciphertext

    def decrypt_and_hash(self, ciphertext: bytes) -> bytes:
        """DecryptAndHash(ciphertext), section 5.2."""
        plaintext = self.cipher.decrypt_with_ad(self.h, ciphertext)
        self.mix_hash(ciphertext)
        return plaintext

    def split(self) -> tuple[CipherState, CipherState]:
        """Split(), section 5.2: two CipherStates for transport."""
        temp_k1, temp_k2 = _hkdf(self.ck, b"", 2)
        return CipherState(temp_k1), CipherState(temp_k2)

    def snapshot(self) -> tuple[bytes, bytes, bytes | None, int]:
        return self.ck, self.h, self.cipher.key, self.cipher.n

    def restore(self, snap: tuple[bytes, bytes, bytes | None, int]) -> None:
        self.ck, self.h, key, n = snap
        self.cipher = CipherState(key)
        self.cipher.n = n


_Snapshot = tuple[bytes | None, bytes | None, tuple[bytes, bytes, bytes | None, int]]


# --- HandshakeState (section 5.3) -------------------------------------------------------


class HandshakeState:
    """HandshakeState, section 5.3, fixed to the XX pattern.

    ``static_private`` / ``ephemeral_private`` are raw 32-byte X25519 private
    keys. ``ephemeral_private`` exists only for test vectors; normally it is
    generated from the OS CSPRNG here (the spec generates it when the "e"
    token is written, which is equivalent since it is used for nothing else).

    Unlike the spec's literal wording (abandon the HandshakeState on any
    error), a failed :meth:`read_message` or :meth:`write_message` leaves the
    state exactly as it was. On a datagram transport this means a forged or
    corrupted packet cannot kill a handshake in progress; the caller remains
    free to abandon it instead.
    """

    def __init__(
        self,
        initiator: bool,
        prologue: bytes,
        static_private: bytes,
        ephemeral_private: bytes | None = None,
    ) -> None:
        self.initiator = bool(initiator)
        self._s = _private_key(static_private, "static_private")
        self._s_pub = _public_bytes(self._s)
        if ephemeral_private is None:
            self._e = X25519PrivateKey.generate()
        else:
            self._e = _private_key(ephemeral_private, "ephemeral_private")
        self._e_pub = _public_bytes(self._e)
        self._re: bytes | None = None
        self._rs: bytes | None = None
        self._done = 0
        # Initialize(): InitializeSymmetric, then MixHash(prologue). XX has no
        # pre-message public keys to mix in.
        self._ss = _SymmetricState(PROTOCOL_NAME)
        self._ss.mix_hash(bytes(prologue))

    # -- public state ------------------------------------------------------------------

    @property
    def messages_done(self) -> int:
        """Number of handshake messages written or read so far (0..3)."""
        return self._done

    @property
    def complete(self) -> bool:
        """True once all three XX messages have been processed."""
        return self._done == len(_PATTERN)

    @property
    def remote_static(self) -> bytes | None:
        """The peer's raw static public key, once received (after message 2 or 3)."""
        return self._rs

    @property
    def handshake_hash(self) -> bytes:
        """h, for channel binding (section 11.2); final only once complete."""
        return self._ss.h

    @property
    def local_static_public(self) -> bytes:
        """Our own raw static public key (handy for the caller's peer tables)."""
        return self._s_pub

    # -- messages ----------------------------------------------------------------------

    def _my_turn_to_write(self) -> bool:
        # Initiator writes messages 0 and 2, responder writes message 1.
        return (self._done % 2 == 0) == self.initiator

    def _mix_dh(self, token: str) -> None:
        """The ee / es / se tokens of section 5.3, for either role."""
        if token == "ee":
            local, remote = self._e, self._re
        elif token == "es":
            # es: DH(initiator's e, responder's s)
            local, remote = (self._e, self._rs) if self.initiator else (self._s, self._re)
        else:  # "se": DH(initiator's s, responder's e)
            local, remote = (self._s, self._re) if self.initiator else (self._e, self._rs)
        if remote is None:  # unreachable with the fixed XX pattern
            raise NoiseError(f"missing remote key for {token}")
        self._ss.mix_key(_dh(local, remote))

    def write_message(self, payload: bytes = b"") -> bytes:
        """WriteMessage(payload, message_buffer), section 5.3; returns the message."""
        if self.complete:
            raise NoiseError("handshake already complete")
        if not self._my_turn_to_write():
            raise NoiseError("not our turn to write")
        snap = self._snapshot()
        try:
            out = bytearray()
            for token in _PATTERN[self._done]:
                if token == "e":
                    out += self._e_pub
                    self._ss.mix_hash(self._e_pub)
                elif token == "s":
                    out += self._ss.encrypt_and_hash(self._s_pub)
                else:
                    self._mix_dh(token)
            out += self._ss.encrypt_and_hash(bytes(payload))
            if len(out) > MAX_MESSAGE_LEN:
                raise NoiseError("handshake message longer than 65535 bytes")
        except Exception:
            self._restore(snap)
            raise
        self._done += 1
        return bytes(out)

    def read_message(self, message: bytes) -> bytes:
        """ReadMessage(message, payload_buffer), section 5.3; returns the payload.

        Raises :class:`NoiseError` for any bad input, and then leaves the state
        unchanged.
        """
        if not isinstance(message, bytes | bytearray | memoryview):
            raise NoiseError("message must be bytes")
        if self.complete:
            raise NoiseError("handshake already complete")
        if self._my_turn_to_write():
            raise NoiseError("not our turn to read")
        message = bytes(message)
        if len(message) > MAX_MESSAGE_LEN:
            raise NoiseError("handshake message longer than 65535 bytes")
        snap = self._snapshot()
        try:
            payload = self._read_tokens(message)
        except NoiseError:
            self._restore(snap)
            raise
        except Exception as exc:  # belt and braces: never leak another exception type
            self._restore(snap)
            raise NoiseError(f"malformed handshake message: {exc!r}") from None
        self._done += 1
        return payload

    def _read_tokens(self, message: bytes) -> bytes:
        pos = 0

        def take(n: int) -> bytes:
            nonlocal pos
            if len(message) - pos < n:
                raise NoiseError("handshake message truncated")
            chunk = message[pos : pos + n]
            pos += n
            return chunk

        for token in _PATTERN[self._done]:
            if token == "e":
                re = take(DHLEN)
                # Reject a low-order point now, so the failure surfaces from
                # this read rather than from our next write_message.
                _check_public(re)
                self._re = re
                self._ss.mix_hash(re)
            elif token == "s":
                length = DHLEN + TAGLEN if self._ss.cipher.has_key() else DHLEN
                rs = self._ss.decrypt_and_hash(take(length))
                _check_public(rs)
                self._rs = rs
            else:
                self._mix_dh(token)
        rest = message[pos:]
        if self._ss.cipher.has_key() and len(rest) < TAGLEN:
            raise NoiseError("handshake payload shorter than the tag")
        return self._ss.decrypt_and_hash(rest)

    def _snapshot(self) -> _Snapshot:
        return self._re, self._rs, self._ss.snapshot()

    def _restore(self, snap: _Snapshot) -> None:
        # Everything a message can change, so a failed one leaves no trace.
        self._re, self._rs, ss = snap
        self._ss.restore(ss)

    def split(self) -> tuple[CipherState, CipherState]:
        """Split(), section 5.2: (initiator->responder, responder->initiator)."""
        if not self.complete:
            raise NoiseError("handshake not complete")
        return self._ss.split()

    def __repr__(self) -> str:
        role = "initiator" if self.initiator else "responder"
        return f"HandshakeState({role}, messages_done={self._done})"
