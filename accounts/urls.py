from django.urls import path

from accounts import views

urlpatterns = [
    path("keys/", views.keys, name="keys"),
    path("keys/<int:key_id>/revoke/", views.key_revoke, name="key-revoke"),
    path("teams/new/", views.team_new, name="team-new"),
    path("teams/switch/", views.team_switch, name="team-switch"),
    path("teams/<slug:slug>/members/", views.team_members, name="team-members"),
    path("teams/<slug:slug>/members/<int:member_id>/role/", views.team_member_role, name="team-member-role"),
    path("teams/<slug:slug>/members/<int:member_id>/remove/", views.team_member_remove, name="team-member-remove"),
    path("teams/<slug:slug>/transfer/", views.team_transfer, name="team-transfer"),
    path("teams/<slug:slug>/invitations/", views.team_invite, name="team-invite"),
    path(
        "teams/<slug:slug>/invitations/<int:invitation_id>/revoke/",
        views.team_invitation_revoke,
        name="team-invitation-revoke",
    ),
    path(
        "teams/<slug:slug>/invitations/<int:invitation_id>/resend/",
        views.team_invitation_resend,
        name="team-invitation-resend",
    ),
    path("invitations/<str:token>/", views.invitation_accept, name="invitation-accept"),
]
