"""URLs of the client-facing model API, mounted at /v1/ (native Llama) and /compat/v1/ (OpenAI)."""

from django.urls import path

from usage import model_api

native_urlpatterns = [
    path("models", model_api.native_models, name="v1-models"),
    path("models/<str:model_id>", model_api.native_models, name="v1-model"),
    path("chat/completions", model_api.native_chat_completions, name="v1-chat-completions"),
    path("moderations", model_api.native_moderations, name="v1-moderations"),
]

compat_urlpatterns = [
    path("models", model_api.compat_models, name="compat-models"),
    path("models/<str:model_id>", model_api.compat_models, name="compat-model"),
    path("chat/completions", model_api.compat_chat_completions, name="compat-chat-completions"),
    path("moderations", model_api.compat_moderations, name="compat-moderations"),
]
