from django import forms
from django.utils import timezone


class ApiKeyCreateForm(forms.Form):
    name = forms.CharField(max_length=100, help_text="What will use it, e.g. 'backend-prod'.")
    expires_at = forms.DateTimeField(
        required=False,
        label="Expires (optional)",
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}),
        help_text="Leave empty for a key that does not expire.",
    )

    def clean_expires_at(self):
        value = self.cleaned_data.get("expires_at")
        if value is not None and value <= timezone.now():
            raise forms.ValidationError("The expiry must be in the future.")
        return value
