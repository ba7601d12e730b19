"""The offsite repository's secrets: the S3 key pair and the cipher passphrase (issue 19).

The key pair comes from `backup.pgbackrest.offsite.credentials_file` (two lines,
`AWS_ACCESS_KEY_ID=...` and `AWS_SECRET_ACCESS_KEY=...`, the form systemd's EnvironmentFile
and Docker's env files take), or else from dvpnd's own environment under the same names.

The passphrase comes from `passphrase_file` (mode 0600 or stricter, at least 20 characters),
or, on Dstack, from the guest agent's `GetKey` (POST /GetKey on /var/run/dstack.sock, JSON
`{"path", "purpose"}`, answer `{"key": hex, "signature_chain": [...]}`): the key is derived
inside the TEE from the app's identity, so a redeployed CVM of the same app gets the same one
and nobody outside the TEE can; the passphrase is HKDF-SHA256 of it, bound to the stanza. It is
fixed once the stanza exists: a changed app key needs a new stanza (README).

Parsing and derivation are pure; reading files and asking the agent are the thin parts. No
secret is ever put in an error message.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Mapping
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from dvpnd.config.model import OffsiteConfig
from dvpnd.errors import DvpnError
from dvpnd.util.fsutil import read_regular

KEY_ID, SECRET = "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"
MIN_PASSPHRASE = 20
GETKEY_PURPOSE = "dvpn pgbackrest repository cipher"
MAX_ANSWER = 64 * 1024


class SecretError(DvpnError):
    pass


def parse_credentials(text: str, where: str) -> tuple[str, str]:
    """(key id, secret) from `NAME=value` lines (comments and `export ` allowed, quotes stripped)."""
    found: dict[str, str] = {}
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        line = line.removeprefix("export ").strip()
        name, eq, value = line.partition("=")
        if not eq:
            raise SecretError(f"{where}, line {n}: not NAME=value")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        if name.strip() in (KEY_ID, SECRET):
            found[name.strip()] = value
    return _pair(found, where)


def _pair(found: Mapping[str, str], where: str) -> tuple[str, str]:
    missing = [k for k in (KEY_ID, SECRET) if not found.get(k)]
    if missing:
        raise SecretError(f"{where}: no {' and no '.join(missing)}")
    for k in (KEY_ID, SECRET):
        if any(c in found[k] for c in "\r\n\0") or len(found[k]) > 512:
            raise SecretError(f"{where}: {k} is not a single line of at most 512 characters")
    return found[KEY_ID], found[SECRET]


def read_credentials(offsite: OffsiteConfig, environ: Mapping[str, str] = os.environ) -> tuple[str, str]:
    if offsite.credentials_file is None:
        return _pair(environ, "dvpnd's environment (backup.pgbackrest.offsite has no credentials_file)")
    return parse_credentials(_secret_file(offsite.credentials_file), str(offsite.credentials_file))


def _secret_file(path: Path) -> str:
    """A secret file's text: a regular file (no link), not readable or writable by group or others."""
    def private(st: os.stat_result) -> None:
        if st.st_mode & 0o077:
            raise SecretError(f"{path}: mode {stat.S_IMODE(st.st_mode):04o}; a secret must be 0600 or "
                              f"stricter (chmod 600 {path})")
    try:
        text = read_regular(path, 64 * 1024, check=private)
    except SecretError:
        raise
    except DvpnError as e:
        raise SecretError(str(e)) from e
    if text is None:
        raise SecretError(f"{path}: no such file")
    return text


def passphrase_from_file(path: Path) -> str:
    text = _secret_file(path).strip()
    if "\n" in text or "\r" in text:
        raise SecretError(f"{path}: the passphrase must be one line")
    if len(text) < MIN_PASSPHRASE:
        raise SecretError(f"{path}: the passphrase is shorter than {MIN_PASSPHRASE} characters")
    return text


def getkey_path(stanza: str) -> str:
    return f"dvpn/pgbackrest/{stanza}"


def passphrase_from_key(key_hex: str, stanza: str) -> str:
    """The repository passphrase from GetKey's key: HKDF-SHA256, bound to the stanza (64 hex)."""
    try:
        key = bytes.fromhex(key_hex)
    except ValueError as e:
        raise SecretError("the guest agent's GetKey answer: 'key' is not hex") from e
    if len(key) < 16:
        raise SecretError(f"the guest agent's GetKey answer: a key of {len(key)} bytes is too short")
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=f"dvpn pgbackrest {stanza}".encode())
    return hkdf.derive(key).hex()


def parse_getkey(body: bytes, where: str) -> str:
    """GetKey's answer: the key's hex."""
    try:
        doc = json.loads(body)
    except ValueError as e:
        raise SecretError(f"{where}: the answer is not JSON") from e
    key = doc.get("key") if isinstance(doc, dict) else None
    if not isinstance(key, str) or not key:
        raise SecretError(f"{where}: the answer has no 'key'")
    return key


async def dstack_passphrase(socket_path: Path, stanza: str, timeout: float = 10.0) -> str:
    """Ask the guest agent (its documented HTTP API on a Unix socket) and derive the passphrase."""
    import aiohttp

    where = f"Dstack guest agent {socket_path} /GetKey"
    try:
        async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(socket_path)),
                                         timeout=aiohttp.ClientTimeout(total=timeout)) as s:
            async with s.post("http://dstack/GetKey",
                              json={"path": getkey_path(stanza), "purpose": GETKEY_PURPOSE}) as r:
                body = await r.content.read(MAX_ANSWER + 1)
                if r.status != 200:
                    raise SecretError(f"{where}: HTTP {r.status}")
    except (aiohttp.ClientError, OSError, TimeoutError) as e:
        raise SecretError(f"{where}: {e or type(e).__name__}") from e
    if len(body) > MAX_ANSWER:
        raise SecretError(f"{where}: the answer is larger than {MAX_ANSWER} bytes")
    return passphrase_from_key(parse_getkey(body, where), stanza)


async def offsite_secrets(offsite: OffsiteConfig, stanza: str,
                          environ: Mapping[str, str] = os.environ) -> tuple[str, str, str]:
    """(key id, secret, passphrase) for the offsite repository."""
    key_id, secret = read_credentials(offsite, environ)
    if offsite.passphrase == "dstack":
        return key_id, secret, await dstack_passphrase(offsite.dstack_socket, stanza)
    assert offsite.passphrase_file is not None  # (the loader requires it)
    return key_id, secret, passphrase_from_file(offsite.passphrase_file)
