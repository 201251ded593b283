from django import forms
from django.utils import timezone

from accounts.models import ApiKey, Membership


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


class TeamCreateForm(forms.Form):
    name = forms.CharField(max_length=120, help_text="E.g. your company or project.")

    def clean_name(self):
        name = self.cleaned_data["name"].strip()
        if not name:
            raise forms.ValidationError("Give the team a name.")
        return name


def _roles(*, can_make_owners: bool) -> list[tuple[str, str]]:
    # Only owners make owners; the service refuses it for others as well.
    return [c for c in Membership.Role.choices if can_make_owners or c[0] != Membership.Role.OWNER]


class InvitationForm(forms.Form):
    email = forms.EmailField(max_length=254)
    role = forms.ChoiceField(choices=Membership.Role.choices, initial=Membership.Role.MEMBER)

    def __init__(self, *args, can_make_owners: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["role"].choices = _roles(can_make_owners=can_make_owners)


class MemberRoleForm(forms.Form):
    role = forms.ChoiceField(choices=Membership.Role.choices)

    def __init__(self, *args, can_make_owners: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["role"].choices = _roles(can_make_owners=can_make_owners)
