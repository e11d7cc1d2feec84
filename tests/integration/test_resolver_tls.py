"""The resolver is called with TLS verification on unless the config turns it off."""

import datetime
import ipaddress
import ssl
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from pdata_sync.base.config import ResolverConfig
from pdata_sync.base.errors import ConfigError
from pdata_sync.demo.resolver_server import ResolverServer
from pdata_sync.identity.resolver import ResolverClient

GUID = "11111111-1111-4111-8111-111111111111"


@pytest.fixture(scope="module")
def self_signed(tmp_path_factory) -> ssl.SSLContext:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "resolver.test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    folder: Path = tmp_path_factory.mktemp("tls")
    (folder / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(folder / "cert.pem", folder / "key.pem")
    return context


def test_config_verifies_tls_by_default():
    assert ResolverConfig(url="https://x.example/r").verify_tls is True


def test_untrusted_certificate_is_a_config_error_not_retried(self_signed):
    with ResolverServer({"c": {"A": GUID}}, ssl_context=self_signed) as server:
        assert server.url.startswith("https://127.0.0.1:")
        cfg = ResolverConfig(url=server.url, max_attempts=5)
        client = ResolverClient(cfg, "c", initial_delay=0.01)
        with client, pytest.raises(ConfigError) as err:
            client.resolve(["A"])
    message = str(err.value)
    assert "resolver 127.0.0.1" in message and "certificate" in message
    assert "verify_tls" in message
    assert server.state.requests == 0  # the handshake failed; nothing was sent, no retries


def test_verification_off_only_when_the_config_says_so(self_signed):
    with ResolverServer({"c": {"A": GUID}}, ssl_context=self_signed) as server:
        cfg = ResolverConfig(url=server.url, verify_tls=False)
        with ResolverClient(cfg, "c") as client:
            assert client.resolve(["A"]).mapping == {"A": GUID}
