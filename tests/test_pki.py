"""Pure certificate helpers (provisioning/pki.py): device certificates, chains, CSRs, signing."""

import datetime as dt
import shutil
import subprocess

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from provisioning import pki
from tests.certs import key_pem, make_cert, new_key, openssl_self_signed, pem
from tests.conftest import require

NOW = dt.datetime(2026, 6, 1, 12, tzinfo=dt.UTC)


def at(days: float) -> dt.datetime:
    return NOW + dt.timedelta(days=days)


@pytest.fixture(scope="module")
def ca():
    return make_cert("Factory CA", ca=True, not_before=at(-30), days=3650)


def leaf_from(ca_pair, cn="00000002", **kw):
    ca_cert, ca_key = ca_pair
    return make_cert(
        cn, issuer_cert=ca_cert, issuer_key=ca_key, not_before=kw.pop("not_before", at(-1)), **kw
    )


def test_device_certificate_dates_are_checked():
    cert, _ = make_cert("00000002", not_before=at(-1), days=365)
    assert pki.check_client_certificate(cert, NOW).common_name == "00000002"
    with pytest.raises(pki.PKIError, match="expired on 2027-05-31 12:00 UTC"):
        pki.check_client_certificate(cert, at(366))
    with pytest.raises(pki.PKIError, match="not valid before 2026-05-31 12:00:00 UTC"):
        pki.check_client_certificate(cert, at(-2))


def test_weak_keys_are_refused():
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    cert, _ = make_cert("00000002", key=weak, not_before=at(-1))
    with pytest.raises(pki.PKIError, match="1024 bits; at least 2048"):
        pki.check_client_certificate(cert, NOW)
    strong, _ = make_cert("00000002", key=new_key("rsa"), not_before=at(-1))
    pki.check_client_certificate(strong, NOW)


def test_chain_to_a_client_ca_without_subject_alt_name(ca):
    leaf, _ = leaf_from(ca)
    assert leaf.extensions.get_extension_for_class(x509.BasicConstraints)  # a real v3 cert
    with pytest.raises(x509.ExtensionNotFound):
        leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    chain = pki.verify_chain(leaf, [], [ca[0]], NOW)
    assert chain[0] == leaf and chain[-1] == ca[0]


def test_chain_through_an_intermediate_the_device_sends(ca):
    inter = make_cert(
        "Line CA", ca=True, issuer_cert=ca[0], issuer_key=ca[1], not_before=at(-10), days=1000
    )
    leaf, _ = leaf_from(inter)
    with pytest.raises(pki.PKIError, match="does not chain"):
        pki.verify_chain(leaf, [], [ca[0]], NOW)
    assert len(pki.verify_chain(leaf, [inter[0]], [ca[0]], NOW)) == 3


def test_certificates_of_another_ca_or_self_signed_are_refused(ca):
    other = make_cert("Other CA", ca=True, not_before=at(-30), days=3650)
    stranger, _ = leaf_from(other)
    with pytest.raises(pki.PKIError, match="does not chain to a client CA"):
        pki.verify_chain(stranger, [], [ca[0]], NOW)
    self_signed, _ = make_cert("00000002", not_before=at(-1))
    with pytest.raises(pki.PKIError):
        pki.verify_chain(self_signed, [], [ca[0]], NOW)
    with pytest.raises(pki.PKIError, match="no client CA"):
        pki.verify_chain(self_signed, [], [], NOW)


def test_expired_leaf_does_not_verify(ca):
    leaf, _ = leaf_from(ca, not_before=at(-40), days=30)
    with pytest.raises(pki.PKIError):
        pki.verify_chain(leaf, [], [ca[0]], NOW)


def make_csr(cn: str, key=None) -> str:
    key = key or new_key()
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .sign(key, hashes.SHA256())
    )
    from cryptography.hazmat.primitives.serialization import Encoding

    return csr.public_bytes(Encoding.PEM).decode()


def test_csr_is_parsed_checked_and_signed_by_the_local_ca():
    ca_cert, ca_key = pki.new_ca("Connector CA", NOW)
    csr = pki.load_csr(make_csr("00000007"))
    assert pki.csr_common_name(csr) == "00000007"
    issued = pki.sign_csr(csr, ca_cert, ca_key, NOW, months=12)
    assert pki.common_name(issued) == "00000007"
    eku = issued.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.CLIENT_AUTH in eku
    assert issued.not_valid_after_utc <= NOW + dt.timedelta(days=372)
    assert pki.verify_chain(issued, [], [ca_cert], at(1))[-1] == ca_cert
    # The CA key survives a PEM round trip (it is stored encrypted).
    again = pki.load_private_key(pki.private_key_pem(ca_key))
    assert again.public_key().public_numbers() == ca_key.public_key().public_numbers()


def test_issued_certificate_never_outlives_its_ca():
    ca_cert, ca_key = pki.new_ca("Short CA", NOW, years=1)
    issued = pki.sign_csr(pki.load_csr(make_csr("d1")), ca_cert, ca_key, NOW, months=60)
    assert issued.not_valid_after_utc == ca_cert.not_valid_after_utc


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "No PEM certificate signing request"),
        (
            "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----",
            "could not be parsed",
        ),
    ],
)
def test_bad_csrs_are_refused(text, message):
    with pytest.raises(pki.PKIError, match=message):
        pki.load_csr(text)


def test_tampered_csr_signature_is_refused():
    good = make_csr("00000007")
    other = make_csr("00000008")
    # Graft the other request's signature onto this one's body: the signature cannot verify.
    import base64

    def der(text):
        body = "".join(text.strip().splitlines()[1:-1])
        return base64.b64decode(body)

    a, b = der(good), der(other)
    tampered = a[:-20] + b[-20:]
    text = (
        "-----BEGIN CERTIFICATE REQUEST-----\n"
        + base64.b64encode(tampered).decode()
        + "\n-----END CERTIFICATE REQUEST-----\n"
    )
    with pytest.raises(pki.PKIError):
        pki.load_csr(text)


def test_weak_csr_key_is_refused():
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    with pytest.raises(pki.PKIError, match="1024 bits"):
        pki.load_csr(make_csr("00000007", key=weak))


def test_the_tutorials_openssl_csr_and_certificate(tmp_path):
    require(shutil.which("openssl") is not None, "openssl is not installed")
    subprocess.run(
        [
            "openssl",
            "req",
            "-nodes",
            "-new",
            "-subj",
            "/C=US/O=Factory/OU=Line 1/CN=00000042",
            "-newkey",
            "rsa:2048",
            "-keyout",
            str(tmp_path / "d.key.pem"),
            "-out",
            str(tmp_path / "d.req.pem"),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    csr = pki.load_csr((tmp_path / "d.req.pem").read_text())
    assert pki.csr_common_name(csr) == "00000042"
    cert_pem, _key = openssl_self_signed(tmp_path, "00000002")
    cert = pki.load_certificates(cert_pem)[0]
    now = dt.datetime.now(dt.UTC)
    assert pki.check_client_certificate(cert, now).common_name == "00000002"


def test_pem_helpers_refuse_private_keys_in_certificate_fields():
    _cert, key = make_cert("x")
    with pytest.raises(pki.PKIError, match="private key"):
        pki.load_certificates(key_pem(key))
    assert pki.load_certificates(pem(make_cert("y")[0]))


def test_openssl_made_ca_and_device_certificate_verify(tmp_path):
    """The custom-CA part of the tutorial, made by openssl as a factory would."""
    require(shutil.which("openssl") is not None, "openssl is not installed")

    def run(*args):
        subprocess.run(
            ["openssl", *args], check=True, capture_output=True, timeout=60, cwd=tmp_path
        )

    run(
        "req",
        "-x509",
        "-nodes",
        "-days",
        "3650",
        "-sha256",
        "-subj",
        "/O=Factory/CN=Factory CA",
        "-newkey",
        "rsa:2048",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
    )
    run(
        "req",
        "-nodes",
        "-new",
        "-subj",
        "/O=Factory/CN=00000005",
        "-newkey",
        "rsa:2048",
        "-keyout",
        "d.key",
        "-out",
        "d.csr",
    )
    run(
        "x509",
        "-req",
        "-in",
        "d.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "365",
        "-sha256",
        "-out",
        "d.pem",
    )
    ca_cert = pki.load_certificates((tmp_path / "ca.pem").read_text())[0]
    pki.check_client_ca(ca_cert, dt.datetime.now(dt.UTC))
    # The device sends its certificate concatenated with the CA, as in the tutorial.
    sent = pki.load_certificates(
        (tmp_path / "d.pem").read_text() + (tmp_path / "ca.pem").read_text()
    )
    chain = pki.verify_chain(sent[0], sent[1:], [ca_cert], dt.datetime.now(dt.UTC))
    assert pki.common_name(chain[0]) == "00000005"


def test_v1_device_certificate_of_another_ca_or_expired_is_refused(tmp_path):
    require(shutil.which("openssl") is not None, "openssl is not installed")

    def run(*args):
        subprocess.run(
            ["openssl", *args], check=True, capture_output=True, timeout=60, cwd=tmp_path
        )

    for name in ("a", "b"):
        run(
            "req",
            "-x509",
            "-nodes",
            "-days",
            "3650",
            "-subj",
            f"/CN=CA {name}",
            "-newkey",
            "rsa:2048",
            "-keyout",
            f"{name}.key",
            "-out",
            f"{name}.pem",
        )
    run(
        "req",
        "-nodes",
        "-new",
        "-subj",
        "/CN=00000005",
        "-newkey",
        "rsa:2048",
        "-keyout",
        "d.key",
        "-out",
        "d.csr",
    )
    run(
        "x509",
        "-req",
        "-in",
        "d.csr",
        "-CA",
        "a.pem",
        "-CAkey",
        "a.key",
        "-CAcreateserial",
        "-days",
        "30",
        "-out",
        "d.pem",
    )
    leaf = pki.load_certificates((tmp_path / "d.pem").read_text())[0]
    assert leaf.version == x509.Version.v1
    ca_a = pki.load_certificates((tmp_path / "a.pem").read_text())[0]
    ca_b = pki.load_certificates((tmp_path / "b.pem").read_text())[0]
    now = dt.datetime.now(dt.UTC)
    assert pki.verify_chain(leaf, [], [ca_b, ca_a], now)[-1] == ca_a
    with pytest.raises(pki.PKIError, match="does not chain"):
        pki.verify_chain(leaf, [], [ca_b], now)
    with pytest.raises(pki.PKIError, match="expired"):
        pki.verify_chain(leaf, [], [ca_a], now + dt.timedelta(days=31))
