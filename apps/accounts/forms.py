"""Forms for creating and editing API keys (user page and admin)."""
from django import forms

from exchange.errors import ExchangeError

from .models import ApiKey
from .services import normalize_ip_allowlist


class IpAllowListField(forms.CharField):
    """IPs or CIDR networks separated by commas or new lines; empty = any address."""

    def __init__(self, **kwargs):
        kwargs.setdefault("required", False)
        kwargs.setdefault("widget", forms.Textarea(attrs={"rows": 2, "cols": 40}))
        kwargs.setdefault("help_text", "IP addresses or CIDR networks, comma-separated; empty allows any address.")
        super().__init__(**kwargs)

    def prepare_value(self, value):
        if isinstance(value, (list, tuple)):
            return ", ".join(value)
        return value

    def clean(self, value):
        value = super().clean(value)
        try:
            return normalize_ip_allowlist(value or "")
        except ExchangeError as exc:
            raise forms.ValidationError(exc.msg) from exc


class ApiKeyCreateForm(forms.Form):
    label = forms.CharField(max_length=100, required=False)
    can_trade = forms.BooleanField(required=False, label="Enable trading", help_text="Reading is always allowed.")
    ip_allowlist = IpAllowListField(label="IP allow-list")


class ApiKeyAdminForm(forms.ModelForm):
    ip_allowlist = IpAllowListField(label="IP allow-list")

    class Meta:
        model = ApiKey
        fields = ["user", "label", "can_trade", "ip_allowlist"]
