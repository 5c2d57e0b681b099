"""Hash chains that make the event log tamper-evident.

Each stored event gets two hashes:

- its *card hash* chains it to the previous event of the same card, so a card's history cannot
  be altered, reordered or cut short in the middle without breaking the chain;
- its *chain hash* chains its card hash to the previous event of the whole log, in the order of
  the notification log, so no event can be removed or inserted anywhere.

The hashes cover the exact stored bytes (topic and state), so they prove what was written, not
a re-encoding of it. The last chain hash is a commitment to the entire log up to that point:
an export's manifest carries it, so a receiver can tell that nothing after it was dropped.
"""

from __future__ import annotations

import hashlib
from uuid import UUID

HASH_BYTES = 32
# The hash before the first event of every card, and before the first event of the log.
GENESIS_HASH = bytes(HASH_BYTES)
_VERSION_BYTES = 8


def card_hash(previous: bytes, card_id: UUID, version: int, topic: str, state: bytes) -> bytes:
    assert len(previous) == HASH_BYTES
    digest = hashlib.sha256(previous)
    digest.update(card_id.bytes)
    digest.update(version.to_bytes(_VERSION_BYTES, "big", signed=True))
    digest.update(topic.encode())
    digest.update(b"\x00")
    digest.update(state)
    return digest.digest()


def chain_hash(previous: bytes, position: int, card_hash_: bytes) -> bytes:
    assert len(previous) == HASH_BYTES
    assert len(card_hash_) == HASH_BYTES
    digest = hashlib.sha256(previous)
    digest.update(position.to_bytes(_VERSION_BYTES, "big", signed=True))
    digest.update(card_hash_)
    return digest.digest()
