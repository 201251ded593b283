from django.urls import path

from accounts import views

urlpatterns = [
    path("keys/", views.keys, name="keys"),
    path("keys/<int:key_id>/revoke/", views.key_revoke, name="key-revoke"),
]
