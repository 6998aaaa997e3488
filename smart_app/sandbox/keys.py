"""Keys of the sandbox EHR: its own id_token signing key and the demo backend-services client's key pair.

All keys are synthetic and made for loopback testing. With a key directory they are kept there between runs
(so an integrator's configuration keeps working after a restart); without one they live in memory only.
Private key files are written with mode 0600 in a directory with mode 0700.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from joserfc.jwk import ECKey, KeySet, RSAKey

SIGNING_KEY_FILE = "sandbox-signing-key.json"  # the sandbox's own RS256 key (private JWK)
BACKEND_KEY_FILES = {"RS384": "backend-rs384", "ES384": "backend-es384"}  # + .pem (PKCS#8) and .jwk.json
BACKEND_JWKS_FILE = "backend-jwks.json"  # public JWKS to register with an EHR
BACKEND_CLIENT_FILE = "backend-client.json"  # everything a backend client needs, in one file


class KeyFileError(Exception):
    """A key file exists but cannot be used (not JSON, not a private key of the expected type)."""


def new_signing_key() -> RSAKey:
    """A fresh RS256 key whose `kid` is its RFC 7638 thumbprint."""
    key = RSAKey.generate_key(2048, parameters={"use": "sig", "alg": "RS256"}, auto_kid=True)
    return key


def new_client_key(alg: str) -> RSAKey | ECKey:
    """A fresh key for a `private_key_jwt` client: RSA 2048 for RS384, P-384 for ES384."""
    if alg == "RS384":
        return RSAKey.generate_key(2048, parameters={"alg": alg}, auto_kid=True)
    if alg == "ES384":
        return ECKey.generate_key("P-384", parameters={"alg": alg}, auto_kid=True)
    raise ValueError(f"unsupported client key algorithm {alg!r} (use RS384 or ES384)")


def public_jwks(keys: list[RSAKey | ECKey]) -> dict[str, Any]:
    """The public JWKS of the given keys (private members never included)."""
    return dict(KeySet(list(keys)).as_dict(private=False))


def _ensure_dir(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)


def _write_private(path: Path, data: str | bytes) -> None:
    """Write a secret file readable by its owner only (created 0600 before any byte is written)."""
    raw = data.encode() if isinstance(data, str) else data
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(raw)
    os.chmod(path, 0o600)


def _read_jwk(path: Path) -> Any:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise KeyFileError(f"{path}: not a readable JSON key file ({exc})") from exc
    if not isinstance(data, dict) or "d" not in data:
        raise KeyFileError(f"{path}: not a private JWK")
    return data


def load_or_create_signing_key(key_dir: Path | None) -> RSAKey:
    """The sandbox's id_token signing key: read from `key_dir` if present there, else made (and saved)."""
    if key_dir is None:
        return new_signing_key()
    path = key_dir / SIGNING_KEY_FILE
    if path.exists():
        data = _read_jwk(path)
        if data.get("kty") != "RSA":
            raise KeyFileError(f"{path}: the signing key must be an RSA key")
        return RSAKey.import_key(data)
    key = new_signing_key()
    _ensure_dir(key_dir)
    _write_private(path, json.dumps(key.as_dict(private=True), indent=2))
    return key


@dataclass(frozen=True)
class BackendKeys:
    """The backend-services client's key pairs (one per algorithm) and, if saved, where their files are."""

    keys: dict[str, RSAKey | ECKey]  # alg -> private key
    files: dict[str, Path]  # alg -> PEM file of the private key (empty when kept in memory)
    jwks_file: Path | None = None

    def public_jwks(self) -> dict[str, Any]:
        return public_jwks(list(self.keys.values()))


def load_or_create_backend_keys(key_dir: Path | None) -> BackendKeys:
    """An RS384 and an ES384 key pair for the demo backend client, kept in `key_dir` when given.

    Files per algorithm: `<name>.pem` (PKCS#8 private key) and `<name>.jwk.json` (private JWK with `kid`
    and `alg`), plus the public `backend-jwks.json`.
    """
    keys: dict[str, RSAKey | ECKey] = {}
    files: dict[str, Path] = {}
    if key_dir is not None:
        _ensure_dir(key_dir)
    for alg, name in BACKEND_KEY_FILES.items():
        key: RSAKey | ECKey
        if key_dir is None:
            keys[alg] = new_client_key(alg)
            continue
        jwk_path = key_dir / f"{name}.jwk.json"
        pem_path = key_dir / f"{name}.pem"
        if jwk_path.exists():
            data = _read_jwk(jwk_path)
            key = RSAKey.import_key(data) if alg == "RS384" else ECKey.import_key(data)
        else:
            key = new_client_key(alg)
            _write_private(jwk_path, json.dumps(key.as_dict(private=True), indent=2))
        if not pem_path.exists():
            _write_private(pem_path, key.as_pem(private=True))
        keys[alg] = key
        files[alg] = pem_path
    jwks_file = None
    if key_dir is not None:
        jwks_file = key_dir / BACKEND_JWKS_FILE
        jwks_file.write_text(json.dumps(public_jwks(list(keys.values())), indent=2), encoding="utf-8")
    return BackendKeys(keys=keys, files=files, jwks_file=jwks_file)
