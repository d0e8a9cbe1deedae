"""The OAuth endpoints, each declared once as an ``Endpoint`` of the pipeline."""

from tokendealer.http.endpoints.introspection import INTROSPECTION
from tokendealer.http.endpoints.revocation import REVOCATION
from tokendealer.http.endpoints.token import TOKEN
from tokendealer.http.endpoints.verification import VERIFICATION

#: Every endpoint the pipeline serves.
ENDPOINTS = (TOKEN, INTROSPECTION, REVOCATION, VERIFICATION)

__all__ = ["ENDPOINTS"]
