from django.urls import path

from usage import views

urlpatterns = [
    path("dashboard/", views.dashboard, name="dashboard"),
]
