"""The gateway's one error tree.

::

    ThriftyError
    ├── BadRequest                  400 invalid_request_error
    │   ├── UnknownModel            404 invalid_request_error  model_not_found
    │   ├── Untranslatable          400 invalid_request_error  (not in this provider's format: next target)
    │   ├── MethodNotAllowed        405 invalid_request_error  method_not_allowed
    │   └── PayloadTooLarge         413 invalid_request_error  request_too_large
    ├── AuthenticationFailed        401 authentication_error   invalid_api_key
    ├── PermissionDenied            403 permission_error
    ├── Refused                     429 (a guard said no; carries retry-after when it knows)
    │   ├── BudgetExceeded          429 insufficient_quota     budget_exceeded
    │   ├── RateLimited             429 rate_limit_error       rate_limited
    │   └── AgentCapReached         429 rate_limit_error       agent_cap_reached / agent_loop_detected
    ├── NotFound                    404 not_found_error
    ├── GuardsUnavailable           503 api_error              guards_unavailable (budgets cannot be checked)
    ├── ConfigError                 (start-up only, never reaches a client)
    └── UpstreamError               502 api_error              (provider answered badly; retryable by status)
        ├── UpstreamRateLimited     429 rate_limit_error       retryable
        ├── UpstreamUnavailable     503 api_error              retryable (5xx, refused connection)
        ├── UpstreamTimeout         504 timeout                retryable
        ├── UpstreamAuthFailed      502 api_error              retryable (the gateway's key or account: 401/402/403)
        └── UpstreamRejected        4xx as the provider said   not retryable (the request itself: 400, 404 ...)

Every class knows its HTTP status, the OpenAI error ``type`` and whether the next target may be tried.
Provider adapters translate their failures into this tree once, at the boundary; the server renders it.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar


class ThriftyError(Exception):
    status: ClassVar[int] = 500
    error_type: ClassVar[str] = "api_error"
    default_code: ClassVar[str | None] = None
    retryable: ClassVar[bool] = False

    def __init__(self, message: str, *, code: str | None = None, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code if code is not None else self.default_code
        self.param = param

    @property
    def http_status(self) -> int:
        return self.status

    def headers(self) -> list[tuple[bytes, bytes]]:
        """Extra response headers (``retry-after``)."""
        return []

    def to_openai(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.error_type,
                "param": self.param,
                "code": self.code,
            }
        }


class BadRequest(ThriftyError):
    status = 400
    error_type = "invalid_request_error"


class UnknownModel(BadRequest):
    status = 404
    default_code = "model_not_found"


class NotCapable(BadRequest):
    """No model the request may go to has a capability it needs (tools, vision, JSON mode), as configured."""

    default_code = "model_not_capable"


class Untranslatable(BadRequest):
    """The request cannot be put in one provider's format (``n`` > 1 or an audio part for Anthropic), found before
    any call: that target is passed over like one lacking a capability, and another may take the request."""


class MethodNotAllowed(BadRequest):
    status = 405
    default_code = "method_not_allowed"


class PayloadTooLarge(BadRequest):
    status = 413
    default_code = "request_too_large"


class AuthenticationFailed(ThriftyError):
    status = 401
    error_type = "authentication_error"
    default_code = "invalid_api_key"


class PermissionDenied(ThriftyError):
    status = 403
    error_type = "permission_error"


class Refused(ThriftyError):
    status = 429
    error_type = "rate_limit_error"

    def __init__(self, message: str, *, code: str | None = None, retry_after_s: float | None = None) -> None:
        super().__init__(message, code=code)
        self.retry_after_s = retry_after_s

    def headers(self) -> list[tuple[bytes, bytes]]:
        if self.retry_after_s is None:
            return []
        return [(b"retry-after", str(max(1, math.ceil(self.retry_after_s))).encode())]


class BudgetExceeded(Refused):
    error_type = "insufficient_quota"
    default_code = "budget_exceeded"


class RateLimited(Refused):
    default_code = "rate_limited"


class AgentCapReached(Refused):
    default_code = "agent_cap_reached"


class NotFound(ThriftyError):
    status = 404
    error_type = "not_found_error"


class GuardsUnavailable(ThriftyError):
    """The budgets' or limits' shared store (Redis), or a budget's spend so far (the ledger database), cannot be
    read: the request is refused rather than let through unchecked; the client may retry."""

    status = 503
    default_code = "guards_unavailable"


class ConfigError(ThriftyError):
    error_type = "config_error"


class UpstreamError(ThriftyError):
    """The provider answered with something the gateway cannot use (garbage, a dropped stream)."""

    status = 502
    error_type = "api_error"
    default_code = "upstream_error"
    retryable = True


class UpstreamRateLimited(UpstreamError):
    status = 429
    error_type = "rate_limit_error"
    default_code = "upstream_rate_limited"


class UpstreamUnavailable(UpstreamError):
    status = 503
    default_code = "upstream_unavailable"


class UpstreamTimeout(UpstreamError):
    status = 504
    error_type = "timeout"
    default_code = "upstream_timeout"


class UpstreamAuthFailed(UpstreamError):
    """A 401, 402 or 403 from the provider: the gateway's credentials or account there (402: out of credit), not
    the client's, are at fault, so the client must not be told its own key is invalid or unpaid; another target
    (other credentials, another account) may still answer."""

    default_code = "upstream_auth_failed"


class UpstreamRejected(UpstreamError):
    """A 4xx from the provider: the request itself is at fault, so no other target is tried."""

    retryable = False
    error_type = "invalid_request_error"
    default_code = "upstream_rejected"

    def __init__(self, message: str, *, upstream_status: int, code: str | None = None) -> None:
        super().__init__(message, code=code)
        self.upstream_status = upstream_status

    @property
    def http_status(self) -> int:
        return self.upstream_status


def upstream_error_for_status(status: int, message: str, code: str | None = None) -> UpstreamError:
    """Translate a provider's HTTP status into the tree (used by every HTTP provider)."""
    if status == 429:
        return UpstreamRateLimited(message)
    if status == 408:
        return UpstreamTimeout(message)
    if status == 402:
        return UpstreamAuthFailed(f"the gateway's account with the provider is out of credit (HTTP 402): {message}")
    if status in (401, 403):
        return UpstreamAuthFailed(f"the provider refused the gateway's credentials (HTTP {status}): {message}")
    if status >= 500:
        return UpstreamUnavailable(message)
    if 400 <= status < 500:
        return UpstreamRejected(message, upstream_status=status, code=code)
    return UpstreamError(message)
