from django import forms
from django.utils import timezone

from accounts.models import ApiKey


class ApiKeyCreateForm(forms.Form):
    name = forms.CharField(max_length=100, help_text="What will use it, e.g. 'backend-prod'.")
    expires_at = forms.DateTimeField(
        required=False,
        label="Expires (optional)",
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}),
        help_text="Leave empty for a key that does not expire.",
    )
    scopes = forms.MultipleChoiceField(
        choices=ApiKey.Scope.choices,
        initial=[ApiKey.Scope.MODEL, ApiKey.Scope.READ],
        required=False,
        widget=forms.CheckboxSelectMultiple,
        help_text="Model API: chat completions. Read: the account API's reads. "
        "Manage: its writes (keys, subscription, spend cap). None ticked: model and read.",
    )

    def __init__(self, *args, can_grant_manage: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        if not can_grant_manage:
            # Only owners and admins hand out `manage`; the service refuses it for others as well.
            self.fields["scopes"].choices = [c for c in ApiKey.Scope.choices if c[0] != ApiKey.Scope.MANAGE]

    def clean_expires_at(self):
        value = self.cleaned_data.get("expires_at")
        if value is not None and value <= timezone.now():
            raise forms.ValidationError("The expiry must be in the future.")
        return value
