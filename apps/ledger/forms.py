"""Admin form for a manual wallet credit/debit (goes through the ledger service)."""
from decimal import Decimal

from django import forms

from .models import Asset


class WalletAdjustmentForm(forms.Form):
    DIRECTION_CHOICES = (("credit", "Credit (add to wallet)"), ("debit", "Debit (take from wallet)"))

    asset = forms.ModelChoiceField(queryset=Asset.objects.all())
    direction = forms.ChoiceField(choices=DIRECTION_CHOICES)
    amount = forms.DecimalField(max_digits=38, decimal_places=18, min_value=Decimal("0"))
    memo = forms.CharField(max_length=255, help_text="Reason, recorded on the ledger transaction.")

    def clean_amount(self):
        amount = self.cleaned_data["amount"]
        if amount <= 0:
            raise forms.ValidationError("The amount must be positive.")
        return amount

    def signed_amount(self) -> Decimal:
        amount = self.cleaned_data["amount"]
        return amount if self.cleaned_data["direction"] == "credit" else -amount
