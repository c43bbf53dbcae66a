"""The secret handshake's pure parts (protocol.auth) and the loading of secrets and certificates
(security): proofs, their checks, and every way a secret file is refused."""

from __future__ import annotations

import hashlib
import hmac
import os
from pathlib import Path

import msgspec
import pytest

from p2pfs.protocol import auth, framing
from p2pfs.protocol import messages as m
from p2pfs.security import SecurityError, load, load_secret

SECRET = b"0123456789abcdef0123456789abcdef"


def test_a_proof_is_hmac_sha256_over_label_role_and_both_nonces() -> None:
    opener, acceptor = auth.new_nonce(), auth.new_nonce()
    expected = hmac.new(
        SECRET, b"p2pfs-auth-v1 opener" + bytes.fromhex(opener) + bytes.fromhex(acceptor), hashlib.sha256
    ).hexdigest()
    assert auth.proof(SECRET, "opener", opener, acceptor) == expected
    assert auth.check(SECRET, "opener", opener, acceptor, expected)
    assert auth.check(SECRET, "opener", opener, acceptor, expected.upper())


def test_a_proof_is_refused_for_another_secret_role_or_nonce() -> None:
    opener, acceptor = auth.new_nonce(), auth.new_nonce()
    good = auth.proof(SECRET, "opener", opener, acceptor)
    assert not auth.check(b"another secret", "opener", opener, acceptor, good)
    assert not auth.check(SECRET, "acceptor", opener, acceptor, good)  # no reflection
    assert not auth.check(SECRET, "opener", auth.new_nonce(), acceptor, good)  # no replay
    assert not auth.check(SECRET, "opener", opener, auth.new_nonce(), good)
    assert not auth.check(SECRET, "opener", opener, acceptor, "00" * 32)


def test_nonces_are_fresh_and_32_bytes() -> None:
    nonces = {auth.new_nonce() for _ in range(100)}
    assert len(nonces) == 100
    assert all(len(bytes.fromhex(n)) == 32 for n in nonces)


def test_handshake_messages_validate_their_hex() -> None:
    nonce = auth.new_nonce()
    assert framing.decode(msgspec.json.encode({"type": "AUTH_CHALLENGE", "nonce": nonce})) == m.AuthChallenge(nonce)
    for bad in ("ab" * 31, "AB" * 32, "zz" * 32, "", 5):
        with pytest.raises(Exception, match="invalid message"):
            framing.decode(msgspec.json.encode({"type": "AUTH_CHALLENGE", "nonce": bad}))
        with pytest.raises(Exception, match="invalid message"):
            framing.decode(msgspec.json.encode({"type": "AUTH_PROOF", "proof": bad}))


def write_secret(path: Path, data: bytes, mode: int = 0o600) -> Path:
    path.write_bytes(data)
    os.chmod(path, mode)
    return path


def test_a_secret_file_is_read_without_surrounding_whitespace(tmp_path: Path) -> None:
    assert load_secret(write_secret(tmp_path / "s", b"  " + SECRET + b"\n")) == SECRET
    assert load(secret_file=tmp_path / "s").secret == SECRET


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o606, 0o700 | 0o040])
def test_a_secret_file_others_can_access_is_refused_like_ssh(tmp_path: Path, mode: int) -> None:
    path = write_secret(tmp_path / "s", SECRET, mode)
    with pytest.raises(SecurityError, match=r"accessible by others .*chmod 600"):
        load_secret(path)


def test_missing_empty_oversized_and_symlinked_secret_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(SecurityError, match="not found"):
        load_secret(tmp_path / "nope")
    with pytest.raises(SecurityError, match="empty"):
        load_secret(write_secret(tmp_path / "empty", b" \n"))
    with pytest.raises(SecurityError, match="larger than"):
        load_secret(write_secret(tmp_path / "big", b"x" * 5000))
    target = write_secret(tmp_path / "real", SECRET)
    (tmp_path / "link").symlink_to(target)
    with pytest.raises(SecurityError):
        load_secret(tmp_path / "link")
    with pytest.raises(SecurityError, match="not a regular file"):
        os.mkfifo(tmp_path / "fifo", 0o600)
        load_secret(tmp_path / "fifo")


def test_tls_needs_all_three_files(tmp_path: Path) -> None:
    with pytest.raises(SecurityError, match="all three"):
        load(tls_cert=tmp_path / "c.pem")
    with pytest.raises(SecurityError, match="not found"):
        load(tls_cert=tmp_path / "c.pem", tls_key=tmp_path / "k.pem", tls_ca=tmp_path / "ca.pem")


def test_tls_contexts_require_and_verify_peer_certificates(tmp_path: Path) -> None:
    trustme = pytest.importorskip("trustme")
    import ssl

    ca = trustme.CA()
    node = ca.issue_cert("node")
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    node.private_key_pem.write_to_path(str(tmp_path / "k.pem"))
    node.cert_chain_pems[0].write_to_path(str(tmp_path / "c.pem"))
    security = load(tls_cert=tmp_path / "c.pem", tls_key=tmp_path / "k.pem", tls_ca=tmp_path / "ca.pem")
    assert security.server_ssl is not None and security.client_ssl is not None
    for context in (security.server_ssl, security.client_ssl):
        assert context.verify_mode == ssl.CERT_REQUIRED
        assert context.minimum_version >= ssl.TLSVersion.TLSv1_2
    (tmp_path / "junk.pem").write_text("not a certificate")
    with pytest.raises(SecurityError, match="cannot load TLS"):
        load(tls_cert=tmp_path / "junk.pem", tls_key=tmp_path / "k.pem", tls_ca=tmp_path / "ca.pem")


def test_the_documented_handshake_example_holds() -> None:
    """docs/PROTOCOL.md section 12 gives these proofs for K and the nonces 5b.. and c0..: other
    implementations check themselves against them."""
    secret, opener, acceptor = b"correct horse battery staple 1234", "5b" * 32, "c0" * 32
    assert auth.proof(secret, "opener", opener, acceptor) == (
        "50ff05ce95ac941e4a5cad33c6eb219f06980c07633bda90df78b80d445b4a76"
    )
    assert auth.proof(secret, "acceptor", opener, acceptor) == (
        "14c123b1b38f2238abd7c0457e677cdf44c1de88de2c265848c29b9e8b155f50"
    )
