"""Ed25519 identities: base58 public keys, detached signatures, the server's own key.

A user *is* a key pair (contract, "Keys, signatures, tokens"): ``public_key`` is base58 of the
raw 32 bytes, a signature is base58 of the 64-byte detached signature over UTF-8 ``message``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import base58
import nacl.exceptions
import nacl.signing
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from heaper_trio.errors import BadRequest, StartupError

_B58_ALPHABET = set("123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz")


def b58decode_exact(text: str, length: int, kind: str, field: str | None = None) -> bytes:
    """Decode base58 text that must give exactly ``length`` bytes, or raise BadRequest.

    ``kind`` names the error code (``invalid_<kind>``); ``field`` is the body field as the
    client spelled it (``signed_message`` on verify_key), for the message and ``field``.
    """
    field = field or kind
    details = {"field": f"body.{field}"}
    if not text or len(text) > 2 * length or not set(text) <= _B58_ALPHABET:
        raise BadRequest(f"{field} is not base58", code=f"invalid_{kind}", details=details)
    raw = base58.b58decode(text)
    if len(raw) != length:
        raise BadRequest(
            f"{field} must encode {length} bytes, got {len(raw)}",
            code=f"invalid_{kind}",
            details=details,
        )
    return raw


def parse_public_key(text: str) -> bytes:
    return b58decode_exact(text, 32, "public_key")


def canonical_public_key(text: str) -> str:
    """The one spelling of a key: base58 of its 32 bytes (rejects leading-zero variants)."""
    raw = parse_public_key(text)
    canonical = base58.b58encode(raw).decode()
    if canonical != text:
        raise BadRequest(
            "public_key is not in canonical base58",
            code="invalid_public_key",
            details={"field": "body.public_key"},
        )
    return canonical


def verify_signature(public_key: bytes, message: str, signature: bytes) -> bool:
    try:
        nacl.signing.VerifyKey(public_key).verify(message.encode(), signature)
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError, ValueError):
        return False
    return True


@dataclass(frozen=True)
class KeyPair:
    """An Ed25519 key pair; used for the server identity and by the bundled client."""

    signing_key: nacl.signing.SigningKey

    @classmethod
    def generate(cls) -> KeyPair:
        return cls(nacl.signing.SigningKey.generate())

    @classmethod
    def from_seed(cls, seed: bytes) -> KeyPair:
        return cls(nacl.signing.SigningKey(seed))

    @property
    def seed(self) -> bytes:
        return bytes(self.signing_key)

    @property
    def public_bytes(self) -> bytes:
        return bytes(self.signing_key.verify_key)

    @cached_property
    def public_key(self) -> str:
        """Kept once made: base58 of 32 bytes is a big-integer loop (~40 µs), and every
        ``GET /api/health`` and token check names the server's key."""
        return base58.b58encode(self.public_bytes).decode()

    def sign(self, message: str) -> str:
        """base58 detached signature over the UTF-8 bytes of ``message``."""
        return base58.b58encode(self.signing_key.sign(message.encode()).signature).decode()

    # PyJWT wants `cryptography` key objects, not pynacl ones (stack-pitfalls section 5).
    def jwt_private_key(self) -> Ed25519PrivateKey:
        return Ed25519PrivateKey.from_private_bytes(self.seed)

    def jwt_public_key(self) -> Ed25519PublicKey:
        return Ed25519PublicKey.from_public_bytes(self.public_bytes)

    def save(self, path: Path) -> None:
        """Write the seed with mode 0600, atomically; never overwrite an existing key.

        ``os.link`` fails if the target exists, so two processes starting on one data
        directory at once agree on a single key: the loser reads the winner's.
        """
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, self.seed.hex().encode() + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    @classmethod
    def load(cls, path: Path) -> KeyPair:
        try:
            text = path.read_text().strip()
            seed = bytes.fromhex(text)
            if len(seed) != 32:
                raise ValueError("wrong length")
        except (OSError, ValueError) as e:
            raise StartupError(f"cannot read key file {path}: {e}") from None
        return cls.from_seed(seed)


SERVER_KEY_FILE = "server_key.ed25519"


def load_or_create_server_key(data_dir: Path) -> KeyPair:
    """The key in ``data_dir``, generated there first if absent (race-safe, see ``save``)."""
    path = data_dir / SERVER_KEY_FILE
    if not path.exists():
        try:
            KeyPair.generate().save(path)
        except FileExistsError:
            pass  # another process won the race; use its key
        except OSError as e:
            raise StartupError(f"cannot write server key {path}: {e}") from None
    return KeyPair.load(path)
