"""Forms of the Devices tab. Validation of the values themselves lives in the services."""

from __future__ import annotations

from django import forms

from devices.resources import check_definition
from devices.validation import parse_tags_lines

TAGS_HELP = "One tag per line as name=value, e.g. group=g1."


class TagsField(forms.CharField):
    widget = forms.Textarea(attrs={"rows": 3, "spellcheck": "false", "placeholder": "group=g1"})

    def clean(self, value) -> list[dict[str, str]]:
        text = super().clean(value)
        try:
            return parse_tags_lines(text)
        except ValueError as exc:
            raise forms.ValidationError(str(exc)) from exc


def tags_text(tags: list[dict[str, str]]) -> str:
    return "\n".join(f"{t['name']}={t['value']}" for t in tags)


class AddDeviceForm(forms.Form):
    identity = forms.CharField(
        label="Identity",
        strip=False,
        max_length=128,
        widget=forms.TextInput(
            attrs={"autocomplete": "off", "spellcheck": "false", "autofocus": True}
        ),
    )
    certificate = forms.CharField(
        label="TLS client certificate or CSR (optional)",
        required=False,
        strip=False,
        widget=forms.Textarea(attrs={"rows": 4, "spellcheck": "false"}),
        help_text="PEM; its CN must be the identity. A certificate signing request is signed "
        "by the connector's local CA and the certificate is shown once.",
    )
    tags = TagsField(label="Tags (optional)", required=False, help_text=TAGS_HELP)
    activation_hours = forms.IntegerField(
        label="Activation period (hours)",
        min_value=1,
        max_value=8760,
        help_text="The device must provision within this time.",
    )

    # Service error keys -> form fields.
    FIELD_FOR = {
        "identity": "identity",
        "auth.key": "certificate",
        "tags": "tags",
        "auth.expire": "activation_hours",
        "auth.type": "certificate",
    }


class ImportForm(forms.Form):
    identities = forms.FileField(
        label="CSV file",
        help_text="Columns ID, TLS Client Certificate, Tags (UTF-8).",
        widget=forms.ClearableFileInput(attrs={"accept": ".csv,text/csv"}),
    )
    update = forms.BooleanField(
        label="Update existing identities (replace their certificate and tags)", required=False
    )


class TagsForm(forms.Form):
    tags = TagsField(label="Tags", required=False, help_text=TAGS_HELP)


class ResourceForm(forms.Form):
    """One resource definition on the Resources tab."""

    alias = forms.CharField(label="Alias", max_length=64, help_text="Letters, digits, _ . -")
    format = forms.ChoiceField(
        label="Format", choices=[("string", "String"), ("number", "Number"), ("boolean", "Boolean")]
    )
    unit = forms.CharField(label="Unit", required=False, max_length=32)
    settable = forms.BooleanField(
        label="Settable (the cloud may set a value the device reads)", required=False
    )
    allowed = forms.CharField(
        label="Allowed values",
        required=False,
        max_length=2000,
        help_text="Comma-separated values, or ranges like 9-11 for numbers. Blank: any.",
    )
    initial = forms.CharField(label="Initial value", required=False, max_length=1000)

    def clean(self):
        data = super().clean()
        if self.errors:
            return data
        allowed = [a.strip() for a in data.get("allowed", "").split(",") if a.strip()]
        definition = {
            "format": data["format"],
            "unit": data.get("unit", ""),
            "settable": data.get("settable", False),
            "allowed": allowed,
            "initial": data.get("initial") or None,
        }
        try:
            data["definition"] = check_definition(data["alias"], definition)
        except ValueError as exc:
            message = str(exc)
            field = message.split(":", 1)[0].rpartition(".")[2]
            self.add_error(field if field in self.fields else "alias", message.split(": ", 1)[-1])
        return data
