"""The JSON management API under /api/ (Bearer API keys; OpenAPI at /api/openapi.json)."""
