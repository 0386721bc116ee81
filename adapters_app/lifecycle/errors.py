class LifecycleError(Exception):
    """A refused action, with an HTTP-ish status for the APIs to reuse."""

    status = 400
    code = "invalid_request"
    # Response headers the refusal needs (a 429's Retry-After).
    headers: dict[str, str] = {}

    def __init__(self, message: str, *, details: object = None):
        super().__init__(message)
        self.message = message
        self.details = details


class NotFound(LifecycleError):
    status = 404
    code = "not_found"


class Conflict(LifecycleError):
    status = 409
    code = "conflict"


class Invalid(LifecycleError):
    status = 400
    code = "invalid_request"


class Forbidden(LifecycleError):
    status = 403
    code = "forbidden"


class Unauthenticated(LifecycleError):
    status = 401
    code = "invalid_api_key"


class TooLarge(Invalid):
    """A request, or an upload, larger than the deployment allows."""

    status = 413
    code = "request_too_large"


class RateLimited(LifecycleError):
    """A key used more than its limits allow in this window: try again after `retry_after`."""

    status = 429
    code = "rate_limit_exceeded"

    def __init__(self, message: str, *, retry_after: int, limit: str, details: object = None):
        super().__init__(message, details=details)
        self.retry_after = max(1, int(retry_after))
        self.limit = limit  # "requests", "tokens" or "streams": OpenAI's error type

    @property
    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}
