"""CurveZMQ keys and the allow-list: who may connect, and which robot_id each key may write.

Key directory layout (`twin-bayes keys --dir DIR NAME...` writes it):

    DIR/server.key, DIR/server.key_secret   the service's certificate
    DIR/<name>.key, DIR/<name>.key_secret    a robot's or client's certificate
    DIR/allowed/<name>.key                   public keys the service lets in; a key
                                             named <robot_id>.key may write only robot_id

Every file is written with mode 0600. Certificates use ZeroMQ's ZPL format
(`zmq.auth.load_certificate` reads them).
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

SERVER = "server"
ALLOWED = "allowed"


class KeysError(ValueError):
    """A key directory or certificate that cannot be used."""


@dataclass(frozen=True)
class CurveKeys:
    """One side's keypair (z85 bytes) plus, for clients, the server's public key."""

    public: bytes
    secret: bytes
    server_public: bytes | None = None

    def apply_client(self, sock: zmq.Socket) -> None:
        sock.curve_publickey = self.public
        sock.curve_secretkey = self.secret
        sock.curve_serverkey = self.server_public

    def apply_server(self, sock: zmq.Socket) -> None:
        sock.curve_server = True
        sock.curve_publickey = self.public
        sock.curve_secretkey = self.secret


def _write_0600(path: Path, text: str) -> None:
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def _cert(public: bytes, secret: bytes | None) -> str:
    lines = [f"#   ****  twin-bayes CURVE certificate, written {time.strftime('%Y-%m-%d %H:%M:%S')}  ****",
             "metadata", "curve", f'    public-key = "{public.decode()}"']
    if secret is not None:
        lines.append(f'    secret-key = "{secret.decode()}"')
    return "\n".join(lines) + "\n"


def generate(directory: str | Path, name: str) -> tuple[Path, Path]:
    """Write DIR/name.key (public) and DIR/name.key_secret (both 0600); unless name is
    'server', also DIR/allowed/name.key, which lets the key in. Returns (public, secret) paths."""
    if not name or "/" in name or name.startswith("."):
        raise KeysError(f"bad key name {name!r}")
    d = Path(directory)
    (d / ALLOWED).mkdir(parents=True, exist_ok=True, mode=0o700)
    public, secret = zmq.curve_keypair()
    pub_path, sec_path = d / f"{name}.key", d / f"{name}.key_secret"
    _write_0600(pub_path, _cert(public, None))
    _write_0600(sec_path, _cert(public, secret))
    if name != SERVER:
        _write_0600(d / ALLOWED / f"{name}.key", _cert(public, None))
    return pub_path, sec_path


def load(directory: str | Path, name: str) -> CurveKeys:
    """The keypair `name` from DIR/name.key_secret, with the server's public key from DIR/server.key."""
    d = Path(directory)
    try:
        public, secret = zmq.auth.load_certificate(d / f"{name}.key_secret")
        server_public, _ = zmq.auth.load_certificate(d / f"{SERVER}.key")
    except (OSError, ValueError) as e:
        raise KeysError(f"{d}: cannot load keys for {name!r} ({e})") from None
    if secret is None:
        raise KeysError(f"{d / (name + '.key_secret')}: holds no secret key")
    return CurveKeys(public, secret, server_public)


def owners(directory: str | Path) -> dict[str, str]:
    """Allow-list: z85 public key (the ZAP User-Id) -> the name (robot_id) it may write."""
    allowed = Path(directory) / ALLOWED
    out = {}
    for path in sorted(allowed.glob("*.key")):
        try:
            public, _ = zmq.auth.load_certificate(path)
        except (OSError, ValueError) as e:
            raise KeysError(f"{path}: not a certificate ({e})") from None
        out[public.decode()] = path.stem
    return out


def start_authenticator(ctx: zmq.Context, directory: str | Path) -> ThreadAuthenticator:
    """A ZAP handler thread admitting exactly the public keys in DIR/allowed."""
    allowed = Path(directory) / ALLOWED
    if not allowed.is_dir():
        raise KeysError(f"{allowed}: no allow-list directory (run `twin-bayes keys`)")
    auth = ThreadAuthenticator(ctx)
    auth.start()
    auth.configure_curve(domain="*", location=str(allowed))
    return auth
