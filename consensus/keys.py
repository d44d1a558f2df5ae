"""Ed25519 keys and human-readable addresses with a checksum and a network prefix.

An address is ``<prefix>1<base32(pubkey_hash || checksum)>`` in lowercase, where the checksum
covers the prefix too: a mistyped character or an address of another network is rejected with a
message that says which.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

PUBKEY_SIZE = 32
SIGNATURE_SIZE = 64
SEED_SIZE = 32
PUBKEY_HASH_SIZE = 20
CHECKSUM_SIZE = 4
ADDRESS_SEPARATOR = "1"


# Ed25519's field prime, and the y coordinates (either sign of x) of the points of small order,
# as in libsodium's blocklist: under such a "public key" one signature verifies for many
# messages, so whoever offers one has in effect signed everything in advance.
_FIELD_PRIME = 2**255 - 19
_SMALL_ORDER_Y = frozenset(
    {
        0,
        1,
        _FIELD_PRIME - 1,
        int.from_bytes(
            bytes.fromhex("26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05"),
            "little",
        ),
        int.from_bytes(
            bytes.fromhex("c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a"),
            "little",
        ),
    }
)


class AddressError(ValueError):
    """A string that is not a valid address of the expected network."""


def pubkey_hash(pubkey: bytes) -> bytes:
    return hashlib.sha256(b"powlab-pkh" + pubkey).digest()[:PUBKEY_HASH_SIZE]


def is_weak_public_key(pubkey: bytes) -> bool:
    """A key of small order, or a non-canonical encoding (y not below the field prime, so that
    one point has two spellings). Wallet policy, not a consensus rule: the RPCs that take other
    people's keys refuse these."""
    y = int.from_bytes(pubkey, "little") & ((1 << 255) - 1)
    return y >= _FIELD_PRIME or y in _SMALL_ORDER_Y


def verify_signature(pubkey: bytes, signature: bytes, message: bytes) -> bool:
    try:
        Ed25519PublicKey.from_public_bytes(pubkey).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True


@dataclass(frozen=True, slots=True)
class PrivateKey:
    """An Ed25519 signing key, made from a 32-byte seed the caller supplies (never drawn here)."""

    seed: bytes

    def __post_init__(self) -> None:
        if len(self.seed) != SEED_SIZE:
            raise ValueError(f"an Ed25519 seed is {SEED_SIZE} bytes, got {len(self.seed)}")

    def _key(self) -> Ed25519PrivateKey:
        return Ed25519PrivateKey.from_private_bytes(self.seed)

    @property
    def public_key(self) -> bytes:
        return self._key().public_key().public_bytes_raw()

    def sign(self, message: bytes) -> bytes:
        return self._key().sign(message)

    def address(self, prefix: str) -> str:
        return encode_address(prefix, pubkey_hash(self.public_key))


def _checksum(prefix: str, payload: bytes) -> bytes:
    return hashlib.sha256(prefix.encode() + b"\x00" + payload).digest()[:CHECKSUM_SIZE]


def encode_address(prefix: str, pkh: bytes) -> str:
    if len(pkh) != PUBKEY_HASH_SIZE:
        raise ValueError(f"a pubkey hash is {PUBKEY_HASH_SIZE} bytes, got {len(pkh)}")
    body = base64.b32encode(pkh + _checksum(prefix, pkh)).decode().rstrip("=").lower()
    return f"{prefix}{ADDRESS_SEPARATOR}{body}"


def decode_address(
    address: str, prefix: str, known_prefixes: dict[str, str] | None = None
) -> bytes:
    """The pubkey hash in `address`, which must carry `prefix`.

    `known_prefixes` maps other networks' prefixes to their names, for a clearer message when
    someone pastes an address of the wrong network.
    """
    if not isinstance(address, str):
        raise AddressError(f"an address is a string, got {type(address).__name__}")
    head, sep, body = address.rpartition(ADDRESS_SEPARATOR)
    if not sep or not head:
        raise AddressError(f"invalid address {address!r}: expected '{prefix}1…'")
    if head != prefix:
        other = (known_prefixes or {}).get(head)
        if other:
            raise AddressError(
                f"address {address!r} belongs to network {other!r}, not this one ({prefix}1…)"
            )
        raise AddressError(
            f"invalid address {address!r}: unknown prefix {head!r}, expected {prefix!r}"
        )
    padded = body.upper() + "=" * (-len(body) % 8)
    try:
        raw = base64.b32decode(padded)
    except ValueError as exc:
        raise AddressError(f"invalid address {address!r}: not base32 ({exc})") from None
    if len(raw) != PUBKEY_HASH_SIZE + CHECKSUM_SIZE or body != body.lower():
        raise AddressError(f"invalid address {address!r}: wrong length or case")
    pkh, checksum = raw[:PUBKEY_HASH_SIZE], raw[PUBKEY_HASH_SIZE:]
    # base32 leaves 3 spare bits in the last character and accepts '=' padding: only the one
    # canonical spelling is valid, or some single-character typos would decode all the same.
    if _checksum(prefix, pkh) != checksum or encode_address(prefix, pkh) != address:
        raise AddressError(f"invalid address {address!r}: checksum mismatch (mistyped?)")
    return pkh
