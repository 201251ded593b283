"""The account API's JSON parser: DRF's, with the bounded loader of core.json_input (depth, lone
surrogates, NUL), so nested or invalid JSON is a 400 in the error shape, never a 500."""

from __future__ import annotations

from django.conf import settings
from rest_framework.parsers import JSONParser

from core.json_input import JsonInputError, RequestTooLarge, json_loads_bounded


class BoundedJSONParser(JSONParser):
    """Reads at most TIERLAB_MAX_BODY_BYTES (core.middleware refuses a larger Content-Length before
    any view runs; this is the guard for a stream that says nothing) and raises
    core.json_input.JsonInputError, a 400 naming the param, on bad input."""

    def parse(self, stream, media_type=None, parser_context=None):
        limit = settings.TIERLAB_MAX_BODY_BYTES
        raw = stream.read(limit + 1)
        if len(raw) > limit:
            raise RequestTooLarge(limit)
        if not raw.strip():  # as DRF's JSONParser: a blank body with a JSON content type is not JSON
            raise JsonInputError("The request body is not valid JSON: it is blank.")
        return json_loads_bounded(raw)
