"""Page-number pagination whose ``page`` is validated like any other parameter: a page that is not a
positive integer is a 400 naming ``page`` (DRF's own answers 404 "Invalid page." to ``?page=abc`` and
reads ``?page=`` as page 1); a page past the end stays a 404."""

from __future__ import annotations

from rest_framework import exceptions, pagination


class PageNumberPagination(pagination.PageNumberPagination):
    def paginate_queryset(self, queryset, request, view=None):
        raw = request.query_params.get(self.page_query_param)
        # At most 18 digits: int() of a 5,000-digit string raises (Python's 4,300-digit limit).
        if raw is not None and not (raw.isascii() and raw.isdigit() and len(raw) <= 18 and int(raw) >= 1):
            raise exceptions.ValidationError({self.page_query_param: ["A page number: an integer from 1."]})
        return super().paginate_queryset(queryset, request, view)

    def get_schema_operation_parameters(self, view):
        parameters = super().get_schema_operation_parameters(view)
        for parameter in parameters:
            if parameter["name"] == self.page_query_param:
                parameter["schema"] = {"type": "integer", "minimum": 1}
        return parameters
