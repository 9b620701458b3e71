"""OpenAPI description of the management API's own authentication scheme."""

from drf_spectacular.extensions import OpenApiAuthenticationExtension


class ApiTokenScheme(OpenApiAuthenticationExtension):
    target_class = "connector.auth.ApiTokenAuthentication"
    name = "apiToken"

    def get_security_definition(self, auto_schema):
        return {
            "type": "apiKey",
            "in": "header",
            "name": "Authorization",
            "description": "`token <token>` from POST /api:1/token/",
        }


class BasicScheme(OpenApiAuthenticationExtension):
    target_class = "connector.auth.BasicAuthentication"
    name = "basicAuth"

    def get_security_definition(self, auto_schema):
        return {"type": "http", "scheme": "basic", "description": "your email and password"}


ERRORS = {
    "400": (
        "Bad input: each wrong field (or JSON path) with what is wrong; a malformed HTTP"
        " request: the parser's one line (text/plain)",
        "FieldErrors",
    ),
    "401": ("No credentials, or wrong ones", "Detail"),
    "403": ("Refused: a cross-site browser write", "Detail"),
    "404": ("No such connector or identity (another user's connector is a 404 too)", "Detail"),
    "415": ("The body's Content-Type is not one this operation reads", "Detail"),
    "429": ("Too many failed sign-ins from this address: wait Retry-After seconds", "Detail"),
}


def complete(result, generator, request, public):
    """Postprocessing hook: add the body schemas of `connector.openapi` as components, and
    give every operation the error answers it can give, so a client or fuzzer knows them."""
    from connector.openapi import COMPONENTS, ref

    result.setdefault("components", {}).setdefault("schemas", {}).update(COMPONENTS)
    for path, item in result.get("paths", {}).items():
        for method, operation in item.items():
            responses = operation.setdefault("responses", {})
            codes = ["400", "401", "403", "429"]
            if "{" in path:
                codes.append("404")
            if "requestBody" in operation:
                codes.append("415")
            if path == "/api:1/token/" and method == "post":
                codes = ["400", "403", "429"]  # a refused sign-in there is its own 401 below
            for code in codes:
                description, schema = ERRORS[code]
                responses.setdefault(
                    code,
                    {
                        "description": description,
                        "content": {"application/json": {"schema": ref(schema)}},
                    },
                )
            if "400" in responses:  # malformed HTTP is refused by the server's parser itself
                responses["400"].setdefault("content", {})["text/plain"] = {
                    "schema": {"type": "string"}
                }
            if "429" in responses:
                responses["429"]["headers"] = {
                    "Retry-After": {"schema": {"type": "integer"}, "description": "seconds"}
                }
    return result
