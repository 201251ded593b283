from __future__ import annotations

from core.models import Heartbeat


def heartbeat_last(*, name: str = "beat") -> Heartbeat | None:
    return Heartbeat.objects.filter(name=name).first()
