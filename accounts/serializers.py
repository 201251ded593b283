from rest_framework import serializers

from accounts.models import ApiKey


class ApiKeySerializer(serializers.ModelSerializer):
    created_by = serializers.SlugRelatedField(slug_field="email", read_only=True)
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
        ]
        read_only_fields = fields


class ApiKeyCreatedSerializer(ApiKeySerializer):
    secret = serializers.CharField(help_text="The whole key. Shown only in this response: store it now.")

    class Meta(ApiKeySerializer.Meta):
        fields = [*ApiKeySerializer.Meta.fields, "secret"]
        read_only_fields = fields


class ApiKeyCreateSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=100)
    expires_at = serializers.DateTimeField(required=False, allow_null=True)


class MeSerializer(serializers.Serializer):
    email = serializers.EmailField(allow_null=True)
    team = serializers.DictField()
    subscription = serializers.DictField(allow_null=True)
