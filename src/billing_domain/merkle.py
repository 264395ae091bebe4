"""The lineage digest's Merkle tree (RFC 6962 shape over sha256) and its inclusion proofs.

An item enters the tree as its 32-byte sha256 (the per-item hash of `usage.item_hash`); its
leaf is `sha256(0x00 || item)` and an inner node `sha256(0x01 || left || right)`, so no leaf
can pose as a node. The tree over n leaves splits at the largest power of two below n, and
the tree of no leaves is `sha256("")`.

A period keeps the tree incrementally as a compact range: the roots of the perfect subtrees
its leaves decompose into (one per set bit of the count, largest first), as hex strings so
aggregate snapshots stay transcodable. Appending merges at most log2(n) of them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

SUM_SCHEME = "sum-sha256-v1"
MERKLE_SCHEME = "merkle-sha256-v2"
SCHEMES = (SUM_SCHEME, MERKLE_SCHEME)

EMPTY_ROOT = hashlib.sha256(b"").hexdigest()


def leaf_hash(item: int) -> bytes:
    return hashlib.sha256(b"\x00" + item.to_bytes(32, "big")).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def append(peaks: list[str], count: int, item: int) -> None:
    """Add one item to the compact range of `count` leaves, in place."""
    node = leaf_hash(item)
    while count & 1:
        node = node_hash(bytes.fromhex(peaks.pop()), node)
        count >>= 1
    peaks.append(node.hex())


def root(peaks: Sequence[str]) -> str:
    """The tree's root from its compact range."""
    if not peaks:
        return EMPTY_ROOT
    node = bytes.fromhex(peaks[-1])
    for peak in reversed(peaks[:-1]):
        node = node_hash(bytes.fromhex(peak), node)
    return node.hex()


def _split(n: int) -> int:
    return 1 << ((n - 1).bit_length() - 1)


def _subtree(leaves: Sequence[bytes]) -> bytes:
    if len(leaves) == 1:
        return leaves[0]
    k = _split(len(leaves))
    return node_hash(_subtree(leaves[:k]), _subtree(leaves[k:]))


def tree_root(items: Sequence[int]) -> str:
    """The root recomputed from all items at once (RFC 6962 MTH), for checks and proofs."""
    if not items:
        return EMPTY_ROOT
    return _subtree([leaf_hash(i) for i in items]).hex()


def audit_path(items: Sequence[int], index: int) -> list[str]:
    """The sibling hashes from item `index`'s leaf up to the root (RFC 6962 PATH), leaf first."""
    if not 0 <= index < len(items):
        raise IndexError(f"leaf {index} is not in a tree of {len(items)}")
    leaves = [leaf_hash(i) for i in items]
    path: list[str] = []

    def walk(lo: int, hi: int) -> None:
        if hi - lo == 1:
            return
        k = _split(hi - lo)
        if index < lo + k:
            walk(lo, lo + k)
            path.append(_subtree(leaves[lo + k : hi]).hex())
        else:
            walk(lo + k, hi)
            path.append(_subtree(leaves[lo : lo + k]).hex())

    walk(0, len(leaves))
    return path


def verify_inclusion(
    leaf: str, index: int, count: int, path: Sequence[str], expected_root: str
) -> bool:
    """Whether `leaf` (a leaf hash, hex) is leaf `index` of the `count`-leaf tree with this
    root (RFC 9162 section 2.1.3.2)."""
    if not 0 <= index < count:
        return False
    fn, sn = index, count - 1
    node = bytes.fromhex(leaf)
    for sibling_hex in path:
        if sn == 0:
            return False
        sibling = bytes.fromhex(sibling_hex)
        if fn & 1 or fn == sn:
            node = node_hash(sibling, node)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            node = node_hash(node, sibling)
        fn >>= 1
        sn >>= 1
    return sn == 0 and node.hex() == expected_root
