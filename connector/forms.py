"""Forms for accounts, connectors and the Settings tab.

`SettingsForm` is the one validation of connector settings: the Settings page posts to it and the
management API feeds it the JSON it received (see `connector.settings_json`).
"""

from __future__ import annotations

import ipaddress

from django import forms
from django.contrib.auth import password_validation
from django.contrib.auth.forms import AuthenticationForm
from django.utils import timezone

from connector import signin
from connector.identity import Casing, IdentityFormat, IdentityType, format_error
from connector.models import (
    HTTP_PROTOCOL,
    MQTT_PROTOCOL,
    AuthType,
    Connector,
    User,
    Vendor,
)
from devices.resources import check_definitions
from provisioning.pki import (
    CertInfo,
    PKIError,
    check_client_ca,
    load_certificates,
    load_private_key,
)

MAX_IP_ENTRIES = 1000


class SignInForm(AuthenticationForm):
    username = forms.EmailField(
        label="Email", widget=forms.EmailInput(attrs={"autofocus": True, "autocomplete": "email"})
    )
    error_messages = {
        **AuthenticationForm.error_messages,
        "invalid_login": "That email and password do not match an account. Check both and "
        "try again (the password is case-sensitive).",
        "inactive": "This account is disabled. Ask the server's administrator.",
    }

    def clean(self):
        try:
            return super().clean()
        except forms.ValidationError:
            if (retry := signin.retry_after_of(self.request)) is not None:
                raise forms.ValidationError(signin.message(retry), code="throttled") from None
            raise


class SignUpForm(forms.Form):
    email = forms.EmailField(widget=forms.EmailInput(attrs={"autocomplete": "email"}))
    password1 = forms.CharField(
        label="Password",
        strip=False,
        widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}),
        help_text="At least 8 characters, not all digits, not a common password and not like "
        "your email address. A few words make a good one.",
    )
    password2 = forms.CharField(
        label="Password again",
        strip=False,
        widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}),
    )

    def clean_email(self) -> str:
        # Whether the address already has an account is not said here (nor anywhere).
        return User.objects.normalize_email(self.cleaned_data["email"]).lower()

    def clean(self):
        data = super().clean()
        p1, p2 = data.get("password1"), data.get("password2")
        if p1 and p2 and p1 != p2:
            self.add_error("password2", "The two passwords differ.")
        elif p1 and data.get("email"):
            try:
                password_validation.validate_password(p1, User(email=data["email"]))
            except forms.ValidationError as exc:
                self.add_error("password1", exc)
        return data


class ConnectorNameForm(forms.ModelForm):
    class Meta:
        model = Connector
        fields = ["name"]
        error_messages = {"name": {"required": "Give the connector a name."}}

    def clean_name(self) -> str:
        name = self.cleaned_data["name"].strip()
        if not name:
            raise forms.ValidationError("Give the connector a name.")
        return name


class NetworkListField(forms.Field):
    """IPv4/IPv6 addresses and CIDR ranges; text (one per line or comma-separated) or a list."""

    widget = forms.Textarea(attrs={"rows": 4, "spellcheck": "false"})

    def to_python(self, value) -> list[str]:
        if value in (None, ""):
            return []
        if isinstance(value, str):
            return [p.strip() for p in value.replace(",", "\n").splitlines() if p.strip()]
        if isinstance(value, (list, tuple)):
            return list(value)
        raise forms.ValidationError("Give a list of addresses or ranges.")

    def validate(self, value: list[str]) -> None:
        super().validate(value)
        if len(value) > MAX_IP_ENTRIES:
            raise forms.ValidationError(f"At most {MAX_IP_ENTRIES} addresses or ranges.")

    def clean(self, value) -> list[str]:
        entries = super().clean(value)
        networks: list[str] = []
        errors = []
        for number, entry in enumerate(entries, start=1):
            if not isinstance(entry, str):
                errors.append(f"Entry {number} is not text.")
                continue
            try:
                network = ipaddress.ip_network(entry, strict=True)
            except ValueError:
                try:
                    loose = ipaddress.ip_network(entry, strict=False)
                except ValueError:
                    errors.append(f"Entry {number} “{entry}” is not an IP address or CIDR range.")
                else:
                    errors.append(
                        f"Entry {number} “{entry}” has host bits set; did you mean {loose}?"
                    )
                continue
            text = str(network.network_address) if network.num_addresses == 1 else str(network)
            if text not in networks:
                networks.append(text)
        if errors:
            raise forms.ValidationError(errors)
        return networks


class SecretTextarea(forms.Textarea):
    """A textarea that never renders a value back (a private key must not echo on errors)."""

    def format_value(self, value):
        return ""


PROTOCOL_CHOICES = [
    (HTTP_PROTOCOL, "HTTP (onep:v1/http)"),
    (MQTT_PROTOCOL, "MQTT and HTTP (murano:v1/mqtt)"),
]


class SettingsForm(forms.Form):
    """Every connector setting (SPEC.md section 5). Bound to one connector."""

    # Protocol
    devmode = forms.BooleanField(
        label="Enable Developer Mode",
        required=False,
        help_text="Accept plain HTTP from devices. Leave off in production.",
    )
    protocol_name = forms.ChoiceField(
        label="Device protocols",
        choices=PROTOCOL_CHOICES,
        required=False,  # not sent: unchanged
        help_text="With MQTT, devices may also connect over MQTT 3.1.1 with TLS.",
    )
    # Provisioning
    auth_type = forms.ChoiceField(label="Authentication method", choices=AuthType.choices)
    provisioning_enabled = forms.BooleanField(label="Enable provisioning", required=False)
    presenter_identity = forms.BooleanField(
        label="Allow devices to register their own identity",
        required=False,
        help_text="Devices that are not whitelisted get the identity they present.",
    )
    ip_whitelisting_enabled = forms.BooleanField(
        label="Restrict IP addresses that may provision devices", required=False
    )
    ip_allowed = NetworkListField(
        label="Allowed addresses and ranges",
        required=False,
        help_text="One IPv4 or IPv6 address or CIDR range per line, e.g. 203.0.113.0/24.",
    )
    activation_period_hours = forms.IntegerField(
        label="Activation period (hours)",
        min_value=1,
        max_value=8760,
        help_text="A whitelisted device must provision within this time.",
    )
    # Identity format
    id_prefix = forms.CharField(label="Prefix", required=False, strip=False, max_length=64)
    id_type = forms.ChoiceField(label="Type", choices=IdentityType.choices)
    id_length = forms.IntegerField(
        label="Length",
        required=False,
        min_value=0,
        help_text="Characters after the prefix. Blank for unlimited.",
    )
    id_casing = forms.ChoiceField(label="Casing", choices=Casing.choices)
    # Public key infrastructure
    pki_enabled = forms.BooleanField(label="Enable PKI", required=False)
    client_ca_add = forms.CharField(
        label="Add client CA certificate",
        required=False,
        strip=False,
        widget=forms.Textarea(attrs={"rows": 6, "spellcheck": "false"}),
        help_text="PEM; several certificates may be pasted at once.",
    )
    client_ca_remove = forms.MultipleChoiceField(
        label="Remove", required=False, widget=forms.CheckboxSelectMultiple
    )
    vendor_name = forms.ChoiceField(
        label="Validator vendor", choices=Vendor.choices, required=False
    )
    digicert_profile = forms.CharField(label="Profile name", required=False, max_length=200)
    digicert_api_key = forms.CharField(
        label="API key",
        required=False,
        max_length=500,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "off"}),
        help_text="Write-only. Leave blank to keep the stored key.",
    )
    digicert_validity_months = forms.IntegerField(
        label="Validity (months)", required=False, min_value=1, max_value=120
    )
    local_ca_certificate = forms.CharField(
        label="Local CA certificate (optional)",
        required=False,
        strip=False,
        widget=forms.Textarea(attrs={"rows": 4, "spellcheck": "false"}),
        help_text="Upload your own CA with its key, or leave both blank to have one generated.",
    )
    local_ca_key = forms.CharField(
        label="Local CA private key",
        required=False,
        strip=False,
        widget=SecretTextarea(attrs={"rows": 4, "spellcheck": "false", "autocomplete": "off"}),
        help_text="Write-only: stored encrypted, never shown again.",
    )

    # Only through the API's settings JSON (the Resources tab has its own form); None = unchanged.
    resources = forms.JSONField(required=False)

    def __init__(self, *args, connector: Connector, **kwargs):
        self.connector = connector
        kwargs.setdefault("initial", initial_from_connector(connector))
        super().__init__(*args, **kwargs)
        self.existing_cas = list(connector.client_cas.all())
        self.fields["client_ca_remove"].choices = [
            (ca.fingerprint, ca.subject) for ca in self.existing_cas
        ]

    def clean_protocol_name(self) -> str:
        return self.cleaned_data.get("protocol_name") or self.connector.protocol_name

    def clean_resources(self):
        value = self.cleaned_data.get("resources")
        if value is None:
            return None
        try:
            return check_definitions(value)
        except ValueError as exc:
            raise forms.ValidationError(str(exc)) from exc

    def clean_client_ca_add(self) -> list[CertInfo]:
        text = self.cleaned_data["client_ca_add"]
        if not text.strip():
            return []
        now = timezone.now()
        try:
            infos = [check_client_ca(cert, now) for cert in load_certificates(text)]
        except PKIError as exc:
            raise forms.ValidationError(str(exc)) from exc
        existing = {ca.fingerprint for ca in self.existing_cas}
        seen: set[str] = set()
        for info in infos:
            if info.fingerprint in existing or info.fingerprint in seen:
                raise forms.ValidationError(f"“{info.subject}” is already a client CA.")
            seen.add(info.fingerprint)
        return infos

    def clean(self):
        data = super().clean()
        self._clean_identity_format(data)
        if (
            data.get("ip_whitelisting_enabled")
            and not data.get("ip_allowed")
            and ("ip_allowed" not in self.errors)
        ):
            self.add_error(
                "ip_allowed", "Add at least one address or range, or turn the restriction off."
            )
        self._clean_pki(data)
        return data

    def _clean_identity_format(self, data) -> None:
        keys = ("id_prefix", "id_type", "id_length", "id_casing")
        if any(k in self.errors for k in keys):
            return
        fmt = IdentityFormat(
            prefix=data.get("id_prefix", ""),
            type=data.get("id_type", IdentityType.OPAQUE),
            length=data.get("id_length") or None,
            casing=data.get("id_casing", Casing.MIXED),
        )
        for part, message in format_error(fmt).items():
            self.add_error(f"id_{part}", message)

    def _clean_pki(self, data) -> None:
        if "client_ca_add" in self.errors:
            return
        removed = set(data.get("client_ca_remove") or [])
        remaining = [ca for ca in self.existing_cas if ca.fingerprint not in removed]
        generated = data.get("vendor_name") == Vendor.LOCAL  # its CA becomes a client CA
        if (
            data.get("pki_enabled")
            and not remaining
            and not data.get("client_ca_add")
            and not (generated)
        ):
            self.add_error("client_ca_add", "Add at least one client CA certificate to enable PKI.")
        if data.get("vendor_name") == Vendor.DIGICERT:
            if not data.get("digicert_profile"):
                self.add_error("digicert_profile", "DigiCert needs the profile name.")
            if not data.get("digicert_api_key") and not self.connector.vendor_api_key_encrypted:
                self.add_error("digicert_api_key", "DigiCert needs an API key.")
            if not data.get("digicert_validity_months"):
                self.add_error("digicert_validity_months", "Say for how many months to sign.")
        self._clean_local_ca(data)

    def _clean_local_ca(self, data) -> None:
        cert_text, key_text = data.get("local_ca_certificate"), data.get("local_ca_key")
        if not (cert_text or key_text):
            return
        if not (cert_text and key_text):
            field = "local_ca_key" if cert_text else "local_ca_certificate"
            self.add_error(field, "Give the CA certificate and its private key together.")
            return
        try:
            info = check_client_ca(load_certificates(cert_text)[0], timezone.now())
            key = load_private_key(key_text)
        except PKIError as exc:
            self.add_error("local_ca_certificate", str(exc))
            return
        if key.public_key() != load_certificates(info.pem)[0].public_key():
            self.add_error("local_ca_key", "This private key does not belong to the certificate.")
            return
        data["local_ca"] = (info, key_text)


def initial_from_connector(connector: Connector) -> dict:
    options = connector.vendor_options or {}
    return {
        "devmode": connector.devmode,
        "protocol_name": connector.protocol_name,
        "auth_type": connector.auth_type,
        "provisioning_enabled": connector.provisioning_enabled,
        "presenter_identity": connector.presenter_identity,
        "ip_whitelisting_enabled": connector.ip_whitelisting_enabled,
        "ip_allowed": "\n".join(connector.ip_allowed),
        "activation_period_hours": connector.activation_period_hours,
        "id_prefix": connector.id_prefix,
        "id_type": connector.id_type,
        "id_length": connector.id_length,
        "id_casing": connector.id_casing,
        "pki_enabled": connector.pki_enabled,
        "client_ca_add": "",
        "client_ca_remove": [],
        "vendor_name": connector.vendor_name,
        "digicert_profile": options.get("profile_name", ""),
        "digicert_api_key": "",
        "digicert_validity_months": options.get("validity_months"),
        "local_ca_certificate": "",
        "local_ca_key": "",
    }
