"""Seeds that are pure functions of names: the same in every process, rank, worker and session.

Python's ``hash`` is salted per process, and a generator that runs through a split draws different
numbers for a sample depending on which samples came before it. Keyed draws (a sample's crop in a
view, its modality dropout in an epoch, its drop draw in an evaluation) make results independent of
batch size, worker count, rank count and of where a killed run was resumed.
"""

from __future__ import annotations

import hashlib
from typing import Any


def stable_seed(*parts: Any) -> int:
    """A 63-bit seed from any printable ``parts``."""
    digest = hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1
