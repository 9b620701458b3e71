"""The settings JSON of SPEC.md section 5 (Murano's shape), mapped onto `SettingsForm`.

The API does not validate on its own: it turns the JSON into form data, lets the same
`SettingsForm` the Settings page uses decide, and maps the form's errors back to JSON paths.
"""

from __future__ import annotations

from typing import Any

from connector import subscriptions
from connector.forms import SettingsForm, initial_from_connector
from connector.models import Connector
from provisioning.pki import PKIError, cert_info, load_certificates

# form field -> (JSON path, JSON type)
FIELDS: dict[str, tuple[str, type | tuple[type, ...]]] = {
    "devmode": ("protocol.devmode", bool),
    "protocol_name": ("protocol.name", str),
    "provisioning_enabled": ("provisioning.enabled", bool),
    "auth_type": ("provisioning.auth_type", str),
    "presenter_identity": ("provisioning.presenter_identity", bool),
    "ip_whitelisting_enabled": ("provisioning.ip_whitelisting.enabled", bool),
    "ip_allowed": ("provisioning.ip_whitelisting.allowed", list),
    "activation_period_hours": ("provisioning.activation_period_hours", int),
    "id_prefix": ("identity_format.prefix", str),
    "id_type": ("identity_format.type", str),
    "id_casing": ("identity_format.options.casing", str),
    "id_length": ("identity_format.options.length", (int, type(None))),
    "pki_enabled": ("pki.enabled", bool),
    "client_ca_add": ("pki.client_ca", list),
    "vendor_name": ("pki.vendor.name", (str, type(None))),
    "digicert_profile": ("pki.vendor.options.profile_name", str),
    "digicert_api_key": ("pki.vendor.options.api_key", str),
    "digicert_validity_months": ("pki.vendor.options.validity_months", (int, type(None))),
    "local_ca_certificate": ("pki.vendor.options.ca_certificate", str),
    "local_ca_key": ("pki.vendor.options.ca_private_key", str),
    "resources": ("resources", dict),
}
PATH_TO_FIELD = {path: field for field, (path, _type) in FIELDS.items()}
FIELD_TO_PATH = {field: path for field, (path, _type) in FIELDS.items()}
FIELD_TO_PATH["client_ca_remove"] = "pki.client_ca"
READ_ONLY = {"fqdn", "events"}


def settings_to_json(connector: Connector, full: bool = True) -> dict[str, Any]:
    """`full=False` (a viewer): no vendor options and no event destinations."""
    options = connector.vendor_options or {}
    vendor_options: dict[str, Any] = {}
    if connector.vendor_name == "digicert":
        vendor_options = {
            "profile_name": options.get("profile_name", ""),
            "validity_months": options.get("validity_months"),
            "api_key_set": bool(connector.vendor_api_key_encrypted),
        }
    elif connector.vendor_name == "local":
        vendor_options = {"ca_certificate": connector.signer_ca_pem or None}
    if not full:
        vendor_options = {}
    found = {
        "fqdn": connector.fqdn,
        "protocol": {"name": connector.protocol_name, "devmode": connector.devmode},
        "provisioning": {
            "enabled": connector.provisioning_enabled,
            "auth_type": connector.auth_type,
            "presenter_identity": connector.presenter_identity,
            "ip_whitelisting": {
                "enabled": connector.ip_whitelisting_enabled,
                "allowed": list(connector.ip_allowed),
            },
            "activation_period_hours": connector.activation_period_hours,
        },
        "identity_format": {
            "prefix": connector.id_prefix,
            "type": connector.id_type,
            "options": {"casing": connector.id_casing, "length": connector.id_length or 0},
        },
        "pki": {
            "enabled": connector.pki_enabled,
            "client_ca": [ca.pem for ca in connector.client_cas.all()],
            "vendor": {"name": connector.vendor_name or None, "options": vendor_options},
        },
        "resources": connector.resources,
    }
    if full:
        found["events"] = subscriptions.settings_summary(connector)
    return found


def _flatten(data: dict, prefix: str, out: dict[str, Any], errors: dict[str, str]) -> None:
    for key, value in data.items():
        path = f"{prefix}{key}"
        if path in PATH_TO_FIELD or path in READ_ONLY:
            out[path] = value  # a whole object for "resources": it replaces the map
        elif isinstance(value, dict) and any(p.startswith(path + ".") for p in PATH_TO_FIELD):
            _flatten(value, path + ".", out, errors)
        else:
            errors[path] = "Unknown setting."


def _type_name(expected) -> str:
    names = {
        bool: "true or false",
        int: "a whole number",
        str: "a string",
        list: "a list",
        dict: "an object",
    }
    types = expected if isinstance(expected, tuple) else (expected,)
    return " or ".join(names.get(t, "null") for t in types)


def form_from_patch(connector: Connector, patch: Any) -> tuple[SettingsForm | None, dict]:
    """Build a bound SettingsForm from a (partial) settings JSON; errors keyed by JSON path."""
    if not isinstance(patch, dict):
        return None, {"non_field_errors": "Send a JSON object."}
    flat: dict[str, Any] = {}
    errors: dict[str, str] = {}
    _flatten(patch, "", flat, errors)
    current = settings_to_json(connector)
    data = initial_from_connector(connector)
    data["ip_allowed"] = list(connector.ip_allowed)
    for path, value in flat.items():
        if path in READ_ONLY:
            if value != _lookup(current, path):
                errors[path] = "This value is read-only."
            continue
        field = PATH_TO_FIELD[path]
        expected = FIELDS[field][1]
        # bool is an int in Python; JSON true must not pass as a number.
        if not isinstance(value, expected) or (isinstance(value, bool) and expected is int):
            errors[path] = f"Must be {_type_name(expected)}."
            continue
        if field == "client_ca_add":
            _replace_cas(connector, value, data, errors)
        elif field == "id_length":
            data[field] = value or None
        elif field == "vendor_name":
            data[field] = value or ""
        else:
            data[field] = value
    if errors:
        return None, errors
    return SettingsForm(data=data, connector=connector), {}


def _replace_cas(connector: Connector, pems: list, data: dict, errors: dict) -> None:
    """`pki.client_ca` replaces the list: keep matching stored CAs, add the new ones."""
    if not all(isinstance(p, str) for p in pems):
        errors["pki.client_ca"] = "Must be a list of PEM strings."
        return
    stored = {ca.fingerprint for ca in connector.client_cas.all()}
    keep: set[str] = set()
    new: list[str] = []
    for number, pem in enumerate(pems, start=1):
        try:
            certs = load_certificates(pem)
        except PKIError as exc:
            errors["pki.client_ca"] = f"Entry {number}: {exc}"
            return
        for cert in certs:
            info = cert_info(cert)
            if info.fingerprint in stored:
                keep.add(info.fingerprint)
            else:
                new.append(info.pem)
    data["client_ca_remove"] = sorted(stored - keep)
    data["client_ca_add"] = "\n".join(dict.fromkeys(new))


def _lookup(data: dict, path: str) -> Any:
    for part in path.split("."):
        data = data.get(part) if isinstance(data, dict) else None
    return data


def form_errors_to_json(form: SettingsForm) -> dict[str, str]:
    result: dict[str, str] = {}
    for field, messages in form.errors.items():
        key = FIELD_TO_PATH.get(field, "non_field_errors")
        result[key] = " ".join(str(m) for m in messages)
    return result
