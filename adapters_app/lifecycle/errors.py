class LifecycleError(Exception):
    """A refused action, with an HTTP-ish status for the APIs to reuse."""

    status = 400
    code = "invalid_request"

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
