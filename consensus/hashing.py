"""Hash functions and the merkle tree."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

HASH_SIZE = 32
ZERO_HASH = bytes(HASH_SIZE)

# Domain-separation prefixes (as in RFC 6962): a leaf can never be mistaken for an inner node,
# which is what made Bitcoin's duplicate-last-leaf merkle tree ambiguous (CVE-2012-2459).
_LEAF = b"\x00"
_NODE = b"\x01"


def sha256d(data: bytes) -> bytes:
    return hashlib.sha256(hashlib.sha256(data).digest()).digest()


def merkle_root(leaves: Sequence[bytes]) -> bytes:
    """Root of an RFC 6962-style tree over `leaves` (txids), committing to their count too.

    An odd node is promoted to the next level unchanged instead of being paired with a copy of
    itself, so repeating trailing transactions always changes the root.
    """
    return merkle_root_of_leaf_hashes([merkle_leaf(leaf) for leaf in leaves])


def merkle_leaf(leaf: bytes) -> bytes:
    """A leaf's hash in the tree of `merkle_root` (a transaction keeps its own: `merkle_leaf`)."""
    return hashlib.sha256(_LEAF + leaf).digest()


def merkle_root_of_leaf_hashes(hashed: Sequence[bytes]) -> bytes:
    """`merkle_root` of the leaves whose `merkle_leaf` hashes these are, in order."""
    if not hashed:
        return ZERO_HASH
    level = list(hashed)
    while len(level) > 1:
        paired = [
            hashlib.sha256(_NODE + level[i] + level[i + 1]).digest()
            for i in range(0, len(level) - 1, 2)
        ]
        if len(level) % 2:
            paired.append(level[-1])
        level = paired
    return hashlib.sha256(len(hashed).to_bytes(4, "big") + level[0]).digest()
