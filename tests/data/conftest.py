"""Fixtures for the data tests: image and dataset builders, a loopback HTTP(S) server, a guard
that fails any connection outside 127.0.0.0/8, and the small local bases for token counts."""

from __future__ import annotations

import datetime
import ipaddress
import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from data_helpers import LoopbackServer, png

# --- never leave the machine ------------------------------------------------------------------


@pytest.fixture(autouse=True)
def connections(monkeypatch) -> list[str]:
    """Every address a test connects to; anything outside 127.0.0.0/8 fails the connect."""
    made: list[str] = []
    real_connect = socket.socket.connect
    loopback = ipaddress.ip_network("127.0.0.0/8")

    def connect(sock, address):
        if isinstance(address, tuple):
            made.append(address[0])
            if ipaddress.ip_address(address[0].split("%")[0]) not in loopback:
                raise OSError(f"test tried to connect outside 127.0.0.0/8: {address}")
        return real_connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    return made


# --- fixtures ---------------------------------------------------------------------------------


@pytest.fixture
def dataset_dir(tmp_path: Path) -> Path:
    """A dataset directory with images/red.png and images/blue.png."""
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "red.png").write_bytes(png("red"))
    (tmp_path / "images" / "blue.png").write_bytes(png("blue", (24, 12)))
    return tmp_path


@pytest.fixture
def server() -> Iterator[LoopbackServer]:
    running = LoopbackServer()
    yield running
    running.close()


@dataclass(frozen=True)
class TLSFiles:
    cert: Path
    key: Path
    hostname: str

    def server_context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert, self.key)
        return context

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.cert))


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory) -> TLSFiles:
    """A self-signed certificate for `images.test`."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    hostname = "images.test"
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(hostname)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    directory = tmp_path_factory.mktemp("tls")
    (directory / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return TLSFiles(directory / "cert.pem", directory / "key.pem", hostname)


@pytest.fixture
def tls_server(tls_files: TLSFiles) -> Iterator[LoopbackServer]:
    running = LoopbackServer(tls_files.server_context())
    yield running
    running.close()


# --- local bases for token counting ----------------------------------------------------------


def _built(name: str) -> str:
    """A local base by catalogue name, built first if this machine does not have it yet."""
    from gemlora.bases import load_catalogue

    if not load_catalogue()[name].is_built():
        from gemlora.train.bases import build_model

        build_model(name)
    return name


@pytest.fixture(scope="session")
def tiny_mm_counter():
    from gemlora.data.tokens import load_token_counter

    return load_token_counter(_built("tiny-gemma-3-mm"))


@pytest.fixture(scope="session")
def text_counter():
    from gemlora.data.tokens import load_token_counter

    return load_token_counter(_built("gemma-3-270m"))


@pytest.fixture(scope="session")
def samples_dir(tmp_path_factory) -> Path:
    from gemlora.data.sample_sets import write_samples

    out = tmp_path_factory.mktemp("samples")
    write_samples(out)
    return out
