"""Private swarms: what a process needs to admit and be admitted — a shared secret (`--secret-file`), TLS
with mutual certificate verification (`--tls-cert/--tls-key/--tls-ca`), or both. Loaded once at start,
every problem as one clear line; `net` applies it to every connection, opened or accepted.
"""

from __future__ import annotations

import logging
import os
import ssl
import stat
from dataclasses import dataclass
from pathlib import Path

from p2pfs.errors import P2PFSError

log = logging.getLogger("p2pfs.security")

#: Secrets shorter than this are accepted with a warning: the handshake is only as strong as the secret
#: (an eavesdropper who records one handshake can try guesses offline).
RECOMMENDED_SECRET_BYTES = 16
#: A secret file larger than this is surely not a secret file.
MAX_SECRET_BYTES = 4096
#: Seconds a TLS handshake may take before the connection is dropped (asyncio's default is 60).
TLS_HANDSHAKE_TIMEOUT = 10.0


class SecurityError(P2PFSError):
    """A secret file or certificate cannot be used (missing, unreadable, too open, invalid)."""


class AuthenticationFailed(P2PFSError):
    """The other side of a connection failed admission: wrong or missing secret, or a TLS certificate that
    the CA did not sign."""


@dataclass(frozen=True)
class Security:
    """How this process's connections are admitted. The default (nothing set) is the seed's open protocol."""

    secret: bytes | None = None
    #: for connections this process accepts (tracker, chunk server) and opens (to a tracker or holder)
    server_ssl: ssl.SSLContext | None = None
    client_ssl: ssl.SSLContext | None = None

    @property
    def tls(self) -> bool:
        return self.server_ssl is not None

    def describe(self) -> str:
        parts = (["shared secret"] if self.secret is not None else []) + (["TLS"] if self.tls else [])
        return " + ".join(parts) or "open"


OPEN = Security()


def load(
    secret_file: str | Path | None = None,
    tls_cert: str | Path | None = None,
    tls_key: str | Path | None = None,
    tls_ca: str | Path | None = None,
) -> Security:
    """Build the Security of a process from its options (paths may be None: not used)."""
    secret = load_secret(Path(secret_file)) if secret_file else None
    tls = [tls_cert, tls_key, tls_ca]
    if any(tls) and not all(tls):
        raise SecurityError("TLS needs all three of --tls-cert, --tls-key and --tls-ca")
    server_ssl = client_ssl = None
    if tls_cert and tls_key and tls_ca:
        server_ssl, client_ssl = tls_contexts(Path(tls_cert), Path(tls_key), Path(tls_ca))
    return Security(secret, server_ssl, client_ssl)


def load_secret(path: Path) -> bytes:
    """The shared secret in `path`: its bytes with surrounding whitespace removed (so `echo`'s newline does
    not matter). Refused like ssh refuses a private key: when group or others may read or write it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)  # (a FIFO must not block us)
    except FileNotFoundError:
        raise SecurityError(f"secret file not found: {path}") from None
    except OSError as exc:
        raise SecurityError(f"cannot read secret file {path}: {exc.strerror or exc}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise SecurityError(f"secret file {path} is not a regular file")
        if st.st_mode & 0o077:
            raise SecurityError(
                f"secret file {path} is accessible by others (mode {stat.S_IMODE(st.st_mode):04o}); "
                f"run: chmod 600 {path}"
            )
        data = os.read(fd, MAX_SECRET_BYTES + 1)
    finally:
        os.close(fd)
    if len(data) > MAX_SECRET_BYTES:
        raise SecurityError(f"secret file {path} is larger than {MAX_SECRET_BYTES} bytes")
    secret = data.strip()
    if not secret:
        raise SecurityError(f"secret file {path} is empty")
    if len(secret) < RECOMMENDED_SECRET_BYTES:
        log.warning(
            "the secret in %s is only %d bytes; use at least %d random bytes (see docs/SECURITY.md)",
            path,
            len(secret),
            RECOMMENDED_SECRET_BYTES,
        )
    return secret


def tls_contexts(cert: Path, key: Path, ca: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """Server and client contexts: TLS 1.2 at least (1.3 where both sides have it), this node's
    certificate, and peers' certificates required and verified against `ca` on both sides.

    Host names are not checked: peers reach each other at whatever addresses the tracker lists (mostly
    IP literals), so membership is "holds a certificate the swarm's CA signed" (see docs/SECURITY.md)."""
    for what, path in (("certificate", cert), ("key", key), ("CA certificate", ca)):
        if not path.is_file():
            raise SecurityError(f"TLS {what} not found: {path}")
    contexts = []
    for purpose in (ssl.Purpose.CLIENT_AUTH, ssl.Purpose.SERVER_AUTH):
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if purpose is ssl.Purpose.CLIENT_AUTH else ssl.PROTOCOL_TLS_CLIENT)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.check_hostname = False
        context.verify_mode = ssl.CERT_REQUIRED
        try:
            context.load_cert_chain(cert, key)
        except (ssl.SSLError, OSError) as exc:
            raise SecurityError(f"cannot load TLS certificate {cert} with key {key}: {_reason(exc)}") from None
        try:
            context.load_verify_locations(cafile=ca)
        except (ssl.SSLError, OSError) as exc:
            raise SecurityError(f"cannot load TLS CA certificate {ca}: {_reason(exc)}") from None
        contexts.append(context)
    return contexts[0], contexts[1]


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError):
        return exc.reason or str(exc)
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    return str(exc)
