"""A throwaway PKI for TLS tests: a CA, a server certificate for 127.0.0.1 and a client
certificate, written as PEM files, with server-side SSL contexts to match."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


class Pki:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, as PEM files."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.ca_key = ec.generate_private_key(ec.SECP256R1())
        self.ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])
        self.ca = self._cert(self.ca_name, self.ca_key, ca=True)
        self._write("ca.pem", self.ca, None)
        self.server = self._issue("server", "127.0.0.1", server=True)
        self.client = self._issue("client", "gateway", server=False)

    def _cert(
        self, subject: x509.Name, key: ec.EllipticCurvePrivateKey, *, ca: bool = False,
        san: bool = False,
    ) -> x509.Certificate:  # fmt: skip
        now = datetime.datetime.now(datetime.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject).issuer_name(self.ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )  # fmt: skip
        if san:
            ip = x509.IPAddress(ipaddress.ip_address("127.0.0.1"))
            builder = builder.add_extension(x509.SubjectAlternativeName([ip]), critical=False)
        return builder.sign(self.ca_key, hashes.SHA256())

    def _issue(self, stem: str, common_name: str, *, server: bool) -> tuple[Path, Path]:
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        return self._write(f"{stem}.pem", self._cert(name, key, san=server), key)

    def _write(
        self, name: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey | None
    ) -> tuple[Path, Path]:
        cert_path, key_path = self.tmp / name, self.tmp / f"{name}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        if key is not None:
            key_path.write_bytes(
                key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                )
            )
        return cert_path, key_path

    def server_context(self, *, require_client_cert: bool = False) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(*self.server)
        if require_client_cert:
            context.verify_mode = ssl.CERT_REQUIRED
            context.load_verify_locations(self.tmp / "ca.pem")
        return context

    @property
    def ca_bundle(self) -> str:
        return str(self.tmp / "ca.pem")
