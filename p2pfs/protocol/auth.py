"""Admission by shared secret, with no I/O: the mutual challenge-response both sides of a connection run
before any other message, when they are given a secret (see docs/PROTOCOL.md, "Admission").

    opener -> acceptor   AUTH_CHALLENGE {nonce: Nc}
    acceptor -> opener   AUTH_CHALLENGE {nonce: Na}
    opener -> acceptor   AUTH_PROOF     {proof: HMAC(secret, "p2pfs-auth-v1 opener"   || Nc || Na)}
    acceptor -> opener   AUTH_PROOF     {proof: HMAC(secret, "p2pfs-auth-v1 acceptor" || Nc || Na)}

The opener proves first, so a connecting outsider learns nothing but a random nonce (no proof to attack
offline). Both nonces are fresh per connection, so no proof can be replayed; the role labels differ, so
a proof cannot be reflected back at its sender. Proofs are compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import Literal

from p2pfs.protocol.limits import NONCE_SIZE

Role = Literal["opener", "acceptor"]

_LABEL = b"p2pfs-auth-v1 "

#: The ERROR text either side sends when the other fails the handshake (and all it learns).
FAILED = "authentication failed"


def new_nonce() -> str:
    """A fresh random nonce, as the hex the AUTH_CHALLENGE carries."""
    return secrets.token_hex(NONCE_SIZE)


def proof(secret: bytes, role: Role, opener_nonce: str, acceptor_nonce: str) -> str:
    """The proof `role` sends: HMAC-SHA256 over the label, the role and both nonces (hex in, hex out)."""
    message = _LABEL + role.encode() + bytes.fromhex(opener_nonce) + bytes.fromhex(acceptor_nonce)
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


def check(secret: bytes, role: Role, opener_nonce: str, acceptor_nonce: str, received: str) -> bool:
    """Whether `received` is `role`'s proof for these nonces (constant-time comparison)."""
    expected = proof(secret, role, opener_nonce, acceptor_nonce)
    return hmac.compare_digest(expected.encode(), received.lower().encode())
