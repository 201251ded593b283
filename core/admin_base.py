"""Admin building blocks shared by the apps."""

from __future__ import annotations

from collections.abc import Callable

from django import forms
from django.contrib import admin
from django.contrib.admin import helpers
from django.http import HttpRequest
from django.template.response import TemplateResponse


class _NoWrites:
    """Nothing can be added, changed or deleted through this admin (viewing needs the view permission)."""

    def has_add_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj=None) -> bool:
        return False


class ReadOnlyAdmin(_NoWrites, admin.ModelAdmin):
    """Rows that only services write (usage, statements, check runs): operators read them here, and
    nothing can be added, changed or deleted. Actions without ``allowed_permissions`` stay available."""


class ReadOnlyInline(_NoWrites, admin.TabularInline):
    """The rows of a read-only parent (invoice lines, statement lines): shown, never edited."""

    extra = 0
    can_delete = False


def admin_action_with_form(
    modeladmin: admin.ModelAdmin,
    request: HttpRequest,
    queryset,
    *,
    action: str,
    title: str,
    intro: str,
    submit_label: str,
    form_class: type[forms.Form],
    initial: dict,
    perform: Callable[[dict], None],
) -> TemplateResponse | None:
    """An admin action with an intermediate page (Django's delete_selected pattern): the first POST
    shows the selection and the form; "apply" posts it back and ``perform(cleaned_data)`` calls the
    service (and leaves its messages)."""
    if "apply" in request.POST:
        form = form_class(request.POST)
        if form.is_valid():
            perform(form.cleaned_data)
            return None  # back to the changelist, with the messages ``perform`` left
    else:
        form = form_class(initial=initial)
    opts = modeladmin.model._meta
    context = {
        **modeladmin.admin_site.each_context(request),
        "title": title,
        "intro": intro,
        "submit_label": submit_label,
        "objects_name": opts.verbose_name_plural,
        "queryset": queryset,
        "form": form,
        "action": action,
        "opts": opts,
        "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
        "media": modeladmin.media + form.media,
    }
    return TemplateResponse(request, "admin/action_form.html", context)
