from django.urls import path

from usage import playground_views, views

urlpatterns = [
    path("dashboard/", views.dashboard, name="dashboard"),
    path("playground/", playground_views.playground_page, name="playground"),
    path("playground/chat/", playground_views.playground_chat, name="playground-chat"),
    path("playground/c/<int:conversation_id>/", playground_views.playground_page, name="playground-conversation"),
    path(
        "playground/c/<int:conversation_id>/rename/",
        playground_views.conversation_rename,
        name="playground-conversation-rename",
    ),
    path(
        "playground/c/<int:conversation_id>/delete/",
        playground_views.conversation_delete,
        name="playground-conversation-delete",
    ),
]
