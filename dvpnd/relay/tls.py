"""The hub relay's certificate: the operator's files, or a self-signed one that dvpnd makes once
(ECDSA P-256, ten years, in the state directory, 0600) and whose SHA-256 fingerprint spokes pin
(`dvpnctl relay fingerprint` prints it)."""

from __future__ import annotations

import datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from dvpnd.errors import DvpnError
from dvpnd.relay.protocol import fingerprint
from dvpnd.util.fsutil import write_atomic


def ensure_self_signed(cert: Path, key: Path, name: str) -> bool:
    """Make the pair if either file is missing; return whether it was made."""
    if cert.exists() and key.exists():
        return False
    key.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    cert.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    private = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name[:64] or "dvpn hub")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
                   .public_key(private.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(days=1))
                   .not_valid_after(now + datetime.timedelta(days=3650))
                   .sign(private, hashes.SHA256()))
    write_atomic(key, private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                            serialization.NoEncryption()), 0o600)
    write_atomic(cert, certificate.public_bytes(serialization.Encoding.PEM), 0o644)
    return True


def cert_fingerprint(cert: Path) -> str:
    """The pin of a PEM certificate file (of its first certificate)."""
    try:
        c = x509.load_pem_x509_certificate(cert.read_bytes())
    except FileNotFoundError:
        raise DvpnError(f"{cert}: no such file") from None
    except ValueError as e:
        raise DvpnError(f"{cert}: not a PEM certificate: {e}") from None
    return fingerprint(c.public_bytes(serialization.Encoding.DER))
