from rest_framework import generics
from rest_framework.permissions import AllowAny

from tiers.selectors import tier_list_public
from tiers.serializers import TierSerializer


class TierListApi(generics.ListAPIView):
    """The public tier catalog: prices (cents), limits (null = unlimited) and models."""

    permission_classes = [AllowAny]
    serializer_class = TierSerializer

    def get_queryset(self):
        return tier_list_public()
