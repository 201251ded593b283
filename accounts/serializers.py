from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from accounts.models import ApiKey, Invitation, Membership, Team


@extend_schema_field({"type": "array", "minItems": 1, "items": {"type": "string", "enum": ApiKey.Scope.values}})
class ScopesField(serializers.ListField):
    """A list of scope names; validated as a whole (one error naming every unknown scope, param "scopes")."""


class ApiKeySerializer(serializers.ModelSerializer):
    created_by = serializers.SlugRelatedField(slug_field="email", read_only=True, allow_null=True)
    status = serializers.CharField(read_only=True, help_text="active, revoked or expired")

    class Meta:
        model = ApiKey
        fields = [
            "id",
            "name",
            "prefix",
            "status",
            "created_by",
            "created_at",
            "expires_at",
            "last_used_at",
            "revoked_at",
            "scopes",
        ]
        read_only_fields = fields


class ApiKeyCreatedSerializer(ApiKeySerializer):
    secret = serializers.CharField(help_text="The whole key. Shown only in this response: store it now.")

    class Meta(ApiKeySerializer.Meta):
        fields = [*ApiKeySerializer.Meta.fields, "secret"]
        read_only_fields = fields


class ApiKeyCreateSerializer(serializers.Serializer):
    # Not blank once trimmed (the regex says so in the schema: a non-space character).
    name = serializers.RegexField(r"\S", max_length=100)
    expires_at = serializers.DateTimeField(required=False, allow_null=True)
    scopes = ScopesField(
        child=serializers.CharField(),
        required=False,
        allow_empty=False,
        help_text="model, read and/or manage (default: model and read). "
        "A key grants at most its own scopes; from a session, only owners and admins grant manage.",
    )

    def validate_scopes(self, value: list[str]) -> list[str]:
        unknown = [scope for scope in value if scope not in ApiKey.Scope.values]
        if unknown:
            # One error for the field (param "scopes"), naming what is wrong.
            raise serializers.ValidationError(
                f"Unknown scope(s): {', '.join(unknown)}. Scopes are {', '.join(ApiKey.Scope.values)}."
            )
        return value


class MeSerializer(serializers.Serializer):
    email = serializers.EmailField(allow_null=True)
    team = serializers.DictField()
    role = serializers.ChoiceField(choices=Membership.Role.choices, allow_null=True)
    subscription = serializers.DictField(allow_null=True)


class TeamSerializer(serializers.ModelSerializer):
    role = serializers.SerializerMethodField(help_text="Your role in the team (null for a key without a creator).")

    class Meta:
        model = Team
        fields = ["id", "slug", "name", "is_personal", "created_at", "role"]
        read_only_fields = fields

    @extend_schema_field({"type": "string", "enum": Membership.Role.values, "nullable": True})
    def get_role(self, team: Team) -> str | None:
        return self.context.get("role")


class MemberSerializer(serializers.ModelSerializer):
    email = serializers.EmailField(source="user.email", read_only=True)
    joined_at = serializers.DateTimeField(source="created_at", read_only=True)

    class Meta:
        model = Membership
        fields = ["id", "email", "role", "joined_at"]
        read_only_fields = fields


class MemberRemovedSerializer(MemberSerializer):
    keys_revoked = serializers.IntegerField(help_text="The member's API keys in this team, revoked with them.")

    class Meta(MemberSerializer.Meta):
        fields = [*MemberSerializer.Meta.fields, "keys_revoked"]
        read_only_fields = fields


class MemberRoleSerializer(serializers.Serializer):
    role = serializers.ChoiceField(choices=Membership.Role.choices)


class InvitationSerializer(serializers.ModelSerializer):
    status = serializers.ChoiceField(choices=Invitation.Status.choices, read_only=True)
    invited_by = serializers.SlugRelatedField(slug_field="email", read_only=True, allow_null=True)

    class Meta:
        model = Invitation
        fields = [
            "id",
            "email",
            "role",
            "status",
            "invited_by",
            "created_at",
            "sent_at",
            "expires_at",
            "accepted_at",
            "revoked_at",
        ]
        read_only_fields = fields


class InvitationCreateSerializer(serializers.Serializer):
    email = serializers.EmailField(max_length=254)
    role = serializers.ChoiceField(choices=Membership.Role.choices, default=Membership.Role.MEMBER)
