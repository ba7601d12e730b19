"""A stand-in for an S3-compatible store (the offsite repository of issue 19), for the lab, its
tests and the compose setup: moto's standalone server (PyPI: no real S3 server installs on these
machines; never in a product path) behind Debian's stunnel, holding a certificate of a CA of its
own that the clients pin (the development server moto runs closes TLS without a close_notify,
which OpenSSL 3 in pgBackRest takes for a truncated answer). Nothing that talks to it is
moto-specific: path-style requests, signatures, TLS verified against the pinned CA.

With `users`, the store checks every request's signature and policy, as a real one does (moto
does once its first INITIAL_NO_AUTH_ACTION_COUNT requests are spent: USERS spends them making the
bucket, versioned, and two users): "writer" may read, write, list and delete objects but not a
version of one nor the bucket's versioning (what a spoke gets: a delete only hides an object
behind a marker); "admin" may do anything (the operator, off the spoke).

    python3 -m dvpnd.lab.s3 --dir D --python VENV/bin/python [--listen A --port P --name N...]

runs it in the foreground (the compose setup's `s3` service) and writes D/ca.pem and, with
--users, D/keys.json (0600) once it serves.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path

from dvpnd.errors import DvpnError

S3_NAME = "s3.dvpn.test"  # the endpoint's name, as a real store knows its own
BUCKET = "dvpn-offsite"

USERS_ACTIONS = 8  # the requests USERS makes, unchecked
USERS = """
import json, sys
import boto3
kw = dict(endpoint_url=f"http://127.0.0.1:{sys.argv[1]}", region_name="us-east-1", aws_access_key_id="setup",
          aws_secret_access_key="setup")
iam, s3 = boto3.client("iam", **kw), boto3.client("s3", **kw)
s3.create_bucket(Bucket=sys.argv[2])
s3.put_bucket_versioning(Bucket=sys.argv[2], VersioningConfiguration={"Status": "Enabled"})
keys = {}
for user, actions in (("writer", ["s3:GetObject", "s3:PutObject", "s3:ListBucket", "s3:GetBucketLocation",
                                  "s3:DeleteObject"]), ("admin", ["s3:*"])):
    iam.create_user(UserName=user)
    doc = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": actions, "Resource": "*"}]}
    iam.put_user_policy(UserName=user, PolicyName=user, PolicyDocument=json.dumps(doc))
    k = iam.create_access_key(UserName=user)["AccessKey"]
    keys[user] = [k["AccessKeyId"], k["SecretAccessKey"]]
print(json.dumps(keys))
"""


def tls_pair(d: Path, names: Sequence[str]) -> tuple[Path, Path, Path]:
    """A CA, and a certificate for `names` it signed: (ca.pem, cert.pem, key.pem) in `d`. Each
    name is a DNS name, and an IP address too where it is one (pgBackRest 2.45 matches the host
    it connects to against the DNS names as text; Python's client wants the IP address)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dvpn S3 stand-in CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=30))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                       crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    sans: list[x509.GeneralName] = []
    for n in names:
        sans.append(x509.DNSName(n))
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            pass
    leaf = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    d.mkdir(parents=True, exist_ok=True)
    paths = (d / "ca.pem", d / "cert.pem", d / "key.pem")
    paths[0].write_bytes(ca.public_bytes(pem))
    paths[0].chmod(0o644)  # (public: every client pins it)
    paths[1].write_bytes(leaf.public_bytes(pem))
    fd = os.open(paths[2], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return paths


def request(host: str, port: int, ca: Path, method: str, path: str) -> bytes:
    """One unsigned HTTPS request to the store, its certificate checked against `ca`."""
    req = urllib.request.Request(f"https://{host}:{port}{path}", method=method)
    with urllib.request.urlopen(req, context=ssl.create_default_context(cafile=str(ca)), timeout=30) as r:
        return bytes(r.read())


class StandIn:
    """moto on 127.0.0.1:moto_port (plain HTTP), stunnel on listen:port (TLS) in front of it, in
    this network namespace (the lab runs this module inside its outside namespace). Files in `d`."""

    def __init__(self, d: Path, python: Path, listen: str, port: int, moto_port: int,
                 names: Sequence[str] = (S3_NAME, "127.0.0.1"), users: bool = False):
        self.d, self.python, self.listen, self.port, self.moto_port = d, python, listen, port, moto_port
        self.names, self.users = tuple(names), users
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.keys: dict[str, list[str]] = {}
        self.ca = d / "ca.pem"
        self.check_host = "127.0.0.1" if listen in ("0.0.0.0", "127.0.0.1") else listen

    def start(self) -> None:
        if not self.python.exists():
            raise DvpnError(f"{self.python}: missing (moto, the S3 stand-in, comes from the venv's test "
                            "extras: ./dev setup makes it)")
        self.ca, cert, key = tls_pair(self.d, self.names)
        (self.d / "stunnel.conf").write_text(
            f"foreground = yes\npid =\n[s3]\naccept = {self.listen}:{self.port}\n"
            f"connect = 127.0.0.1:{self.moto_port}\ncert = {cert}\nkey = {key}\n")
        env = dict(os.environ, MOTO_S3_CUSTOM_ENDPOINTS=",".join(f"https://{n}" for n in self.names),
                   AWS_CONFIG_FILE="/dev/null", AWS_SHARED_CREDENTIALS_FILE="/dev/null")
        if self.users:
            env["INITIAL_NO_AUTH_ACTION_COUNT"] = str(USERS_ACTIONS)
        try:
            self.procs["moto"] = subprocess.Popen(
                [str(self.python), "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.moto_port)],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
            self._wait("moto", lambda: self._connect(self.moto_port))
            if self.users:  # (straight to moto: the requests it lets through unchecked are counted)
                r = subprocess.run([str(self.python), "-c", USERS, str(self.moto_port), BUCKET],
                                   capture_output=True, text=True, timeout=120, env=env)
                if r.returncode != 0:
                    raise DvpnError(f"the S3 stand-in's users: {r.stderr.strip()[-600:]}")
                self.keys = json.loads(r.stdout)
            self.reachable(True)
            if not self.users:
                request(self.check_host, self.port, self.ca, "PUT", f"/{BUCKET}")
        except BaseException:
            self.stop()
            raise

    def reachable(self, on: bool) -> None:
        """Off: stunnel stopped (the store unreachable; moto keeps its data); on: started again."""
        old = self.procs.pop("tunnel", None)
        if old is not None:
            old.terminate()
            old.wait(timeout=30)
        if on:
            with open(self.d / "stunnel.log", "ab") as log:
                self.procs["tunnel"] = subprocess.Popen(["stunnel", str(self.d / "stunnel.conf")],
                                                        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                                        stderr=log)
            self._wait("stunnel", self._answers)

    def _connect(self, port: int) -> bool:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return True
        except OSError:
            return False

    def _answers(self) -> bool:
        try:
            request(self.check_host, self.port, self.ca, "HEAD", f"/{BUCKET}")
            return True
        except urllib.error.HTTPError:
            return True  # (it answers; the bucket may not be made yet)
        except OSError:
            return False

    def _wait(self, what: str, ready: Callable[[], bool]) -> None:
        deadline = time.monotonic() + 30
        while not ready():
            dead = [n for n, p in self.procs.items() if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                tail = (self.d / "stunnel.log").read_text()[-1000:] if (self.d / "stunnel.log").exists() else ""
                raise DvpnError(f"the S3 stand-in: {what} did not come up ({', '.join(dead) or 'timeout'}) {tail}")
            time.sleep(0.3)

    def stop(self) -> None:
        for name in ("tunnel", "moto"):
            p = self.procs.pop(name, None)
            if p is not None and p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python3 -m dvpnd.lab.s3", description=__doc__.split("\n\n")[0])
    ap.add_argument("--dir", type=Path, required=True)
    ap.add_argument("--python", type=Path, required=True, help="a Python with moto and boto3 (the venv's)")
    ap.add_argument("--listen", default="0.0.0.0")
    ap.add_argument("--port", type=int, default=443)
    ap.add_argument("--moto-port", type=int, default=5000)
    ap.add_argument("--name", action="append", default=None, help="a name in its certificate (repeatable)")
    ap.add_argument("--users", action="store_true")
    a = ap.parse_args(argv)
    a.dir.mkdir(parents=True, exist_ok=True)
    for name in ("keys.json", "ca.pem"):  # (written afresh once it serves: a waiter sees the new ones)
        (a.dir / name).unlink(missing_ok=True)
    names = a.name or [S3_NAME]
    # (127.0.0.1 too: the stand-in checks that it answers, from its own loopback)
    s = StandIn(a.dir / "tls", a.python, a.listen, a.port, a.moto_port, [*names, "127.0.0.1"], a.users)
    stop = False

    def on_signal(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    s.start()
    try:
        if a.users:
            fd = os.open(a.dir / "keys.json", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as out:
                json.dump(s.keys, out)
        (a.dir / "ca.pem").write_bytes(s.ca.read_bytes())
        print(f"S3 stand-in (moto) on {a.listen}:{a.port}, bucket {BUCKET}", flush=True)
        while not stop and all(p.poll() is None for p in s.procs.values()):
            time.sleep(1)
    finally:
        s.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
