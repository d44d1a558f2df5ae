"""m-of-n multi-signature locks over Ed25519 keys, committed to by a script hash.

An output's 20-byte lock is either the hash of one public key or the hash of a multisig script
``m ‖ n ‖ key₁ ‖ … ‖ keyₙ`` (one byte each for m and n, then n 32-byte keys in the order the
script's creator gave them). The two hashes are domain-separated, so no key hash can equal a
script hash; an address therefore commits to one key or to (m, the n keys), as a Bitcoin P2SH
address commits to its redeem script. The spender reveals the script and one signature slot per
key, of which exactly m are filled: the slot says which key signed, so each signature is checked
against exactly one key (no trial verification as in CHECKMULTISIG) and keys are used in key order
by construction.
"""

from __future__ import annotations

import hashlib
from typing import NamedTuple

from consensus.errors import DecodeError
from consensus.keys import PUBKEY_HASH_SIZE, PUBKEY_SIZE

MAX_MULTISIG_KEYS = 16  # as Bitcoin's CHECKMULTISIG in P2SH
MULTISIG_HEADER_SIZE = 2
SCRIPT_HASH_TAG = b"powlab-multisig"


class MultisigError(ValueError):
    """m > n, n beyond the limit, duplicate keys, a key of the wrong length, ..."""


class MultisigScript(NamedTuple):
    required: int  # m
    pubkeys: tuple[bytes, ...]  # n keys, in the order they were given

    @classmethod
    def build(cls, required: int, pubkeys: list[bytes] | tuple[bytes, ...]) -> MultisigScript:
        """A checked script; every rule a consensus check applies is applied here too."""
        script = cls(required, tuple(pubkeys))
        script.check()
        return script

    def check(self) -> None:
        n = len(self.pubkeys)
        if not 1 <= n <= MAX_MULTISIG_KEYS:
            raise MultisigError(f"a multisig script has 1 to {MAX_MULTISIG_KEYS} keys, got {n}")
        if type(self.required) is not int or not 1 <= self.required <= n:
            raise MultisigError(
                f"required signatures must be between 1 and the number of keys ({n}),"
                f" got {self.required}"
            )
        for key in self.pubkeys:
            if type(key) is not bytes or len(key) != PUBKEY_SIZE:
                raise MultisigError(f"a public key is {PUBKEY_SIZE} bytes")
        if len(set(self.pubkeys)) != n:
            raise MultisigError("duplicate public keys in a multisig script")

    @property
    def size(self) -> int:
        return len(self.pubkeys)

    def encode(self) -> bytes:
        return bytes((self.required, len(self.pubkeys))) + b"".join(self.pubkeys)

    @property
    def script_hash(self) -> bytes:
        return script_hash(self.encode())


def script_hash(encoded_script: bytes) -> bytes:
    return hashlib.sha256(SCRIPT_HASH_TAG + encoded_script).digest()[:PUBKEY_HASH_SIZE]


def decode_multisig_script(data: bytes) -> MultisigScript:
    """Parse and check an encoded script; any other length, count or key is refused."""
    if type(data) is not bytes or len(data) < MULTISIG_HEADER_SIZE + PUBKEY_SIZE:
        raise DecodeError("a multisig script is m, n and at least one 32-byte key")
    required, n = data[0], data[1]
    if len(data) != MULTISIG_HEADER_SIZE + n * PUBKEY_SIZE:
        raise DecodeError(
            f"multisig script declares {n} keys but carries"
            f" {(len(data) - MULTISIG_HEADER_SIZE) / PUBKEY_SIZE:g}"
        )
    keys = tuple(
        data[MULTISIG_HEADER_SIZE + i * PUBKEY_SIZE : MULTISIG_HEADER_SIZE + (i + 1) * PUBKEY_SIZE]
        for i in range(n)
    )
    try:
        return MultisigScript.build(required, keys)
    except MultisigError as exc:
        raise DecodeError(f"invalid multisig script: {exc}") from None
