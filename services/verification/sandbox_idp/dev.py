"""What `abonent up` needs to run the sandbox ESIA: a dev GOST key and certificate, the command, the env."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from services.verification.identity.gost_keys import GostPrivateKey, self_signed_certificate, to_pem

DEV_CLIENT_ID = "ABONENT_DEV"


@dataclass(frozen=True, slots=True)
class DevSandbox:
    url: str
    command: list[str]
    # ABONENT_* variables that point the verification service at this sandbox as its ESIA.
    env: dict[str, str]


def _dev_client(folder: Path) -> tuple[Path, Path]:
    """The dev system's GOST key and self-signed certificate, kept in the data folder across restarts."""
    key_path, cert_path = folder / "client-key.pem", folder / "client-cert.pem"
    if not (key_path.exists() and cert_path.exists()):
        folder.mkdir(parents=True, exist_ok=True)
        key = GostPrivateKey.generate()
        key_path.write_text(key.to_pem())
        key_path.chmod(0o600)
        cert_path.write_text(to_pem("CERTIFICATE", self_signed_certificate(key, DEV_CLIENT_ID)))
    return key_path, cert_path


def dev_sandbox(folder: Path, host: str, port: int) -> DevSandbox:
    """The sandbox registered with the dev system's certificate, and the settings the service needs."""
    key_path, cert_path = _dev_client(folder)
    url = f"http://{host}:{port}"
    command = [
        sys.executable,
        "-m",
        "services.verification.sandbox_idp",
        "--host",
        host,
        "--port",
        str(port),
        "--client",
        f"{DEV_CLIENT_ID}={cert_path}",
    ]
    env = {
        "ABONENT_IDENTITY_MODE": "esia",
        "ABONENT_ESIA_BASE_URL": url,
        "ABONENT_ESIA_CLIENT_ID": DEV_CLIENT_ID,
        "ABONENT_ESIA_SIGNER": "gost",
        "ABONENT_ESIA_PRIVATE_KEY_PATH": str(key_path),
        "ABONENT_ESIA_CERTIFICATE_PATH": str(cert_path),
        # The sandbox signs tokens with a key it makes at start: the service fetches it from here.
        "ABONENT_ESIA_JWKS_URL": f"{url}/jwks",
    }
    return DevSandbox(url=url, command=command, env=env)
