"""OpenAPI post-processing: every operation documents the `{code, msg}` error body.

Every refusal leaves through `exchange.api.exception_handler` with a 4xx/5xx status
and this body, so the schema says so once here instead of on each view.
"""
ERROR_SCHEMA = {
    "type": "object",
    "properties": {"code": {"type": "integer", "example": -1121}, "msg": {"type": "string"}},
    "required": ["code", "msg"],
}
ERROR_STATUSES = {
    "400": "Bad request: a parameter, filter or business rule refused it",
    "401": "API key missing, unknown, revoked, IP not allowed, or lacking the permission",
    "403": "Forbidden",
    "404": "Not found",
    "418": "Banned for ignoring 429s (Retry-After says how long)",
    "429": "Request weight or order rate limit exceeded (Retry-After says when to retry)",
    "500": "Internal error",
}


def add_error_responses(result, generator, request, public):
    result.setdefault("components", {}).setdefault("schemas", {})["Error"] = ERROR_SCHEMA
    reference = {"$ref": "#/components/schemas/Error"}
    for path_item in result.get("paths", {}).values():
        for operation in path_item.values():
            responses = operation.setdefault("responses", {})
            for status, description in ERROR_STATUSES.items():
                responses.setdefault(status, {"description": description,
                                              "content": {"application/json": {"schema": reference}}})
    return result
