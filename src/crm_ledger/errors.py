"""Exceptions raised by crm-ledger.

Every error the service raises on purpose derives from `LedgerError`; where a builtin fits, the
subclass derives from it too, so callers may catch either.

    LedgerError
    ├── ConfigError(ValueError)           settings that cannot work (e.g. dev keys off chain 31337)
    ├── InvalidProof(ValueError)          a Merkle proof that cannot belong to the tree it claims
    ├── FormatError(ValueError)           bytes that are not a valid leaf input / receipt / digest
    ├── MappingError(ValueError)          a shop delivery that cannot be mapped to records
    ├── Unavailable(ConnectionError)      something a worker needs is down: back off, retry later
    ├── WorkerHalted                      a background worker cannot go on until an operator acts
    ├── ChainError                        the chain did something we cannot work with
    │   ├── ChainUnavailable(Unavailable)      the node cannot be reached (retry later)
    │   ├── ChainReset                       the contract or genesis we deployed to is gone
    │   └── AnchorRejected                   the contract reverted an anchor transaction
    └── ApiError                             maps to an RFC 9457 problem response
        ├── NotFound / Conflict / Unauthorized / Forbidden / PayloadTooLarge / Unprocessable
        ├── IdempotencyConflict(Conflict)   same Idempotency-Key, different request
        └── TooManyRequests                 over the key's rate limit (carries `retry_after`)
"""

from __future__ import annotations

from typing import Any


class LedgerError(Exception):
    """Root of every error crm-ledger raises on purpose."""


class ConfigError(LedgerError, ValueError):
    """Settings that cannot work; the message says which setting and what to do."""


class InvalidProof(LedgerError, ValueError):
    """A Merkle audit path that cannot belong to the tree it claims."""


class FormatError(LedgerError, ValueError):
    """Bytes or a document that do not follow the ledger format."""


class MappingError(LedgerError, ValueError):
    """A shop's webhook delivery that cannot become records; the message says what is missing."""


class Unavailable(LedgerError, ConnectionError):
    """A node, broker, database or receiver a worker needs cannot be reached; the worker's
    supervisor backs off and retries (nothing is lost: the work stays queued)."""


class WorkerHalted(LedgerError):
    """A background worker cannot go on until an operator acts (the message says how)."""


class ChainError(LedgerError):
    """The chain did something the service cannot work with."""


class ChainUnavailable(ChainError, Unavailable):
    """The JSON-RPC node cannot be reached or answered garbage; anchoring retries later."""


class ChainReset(ChainError):
    """The chain no longer holds our deployment (reset, or a different chain at the same URL)."""

    def __init__(self, message: str, *, expected: str, found: str) -> None:
        super().__init__(message)
        self.expected = expected
        self.found = found


class AnchorRejected(ChainError):
    """The AuditLedger contract reverted an anchor transaction."""

    def __init__(self, message: str, *, first_seq: int, chain_next_seq: int | None) -> None:
        super().__init__(message)
        self.first_seq = first_seq
        self.chain_next_seq = chain_next_seq


class ApiError(LedgerError):
    """An error with an HTTP status, rendered as RFC 9457 problem details."""

    status = 400
    title = "Bad request"

    def __init__(self, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra


class NotFound(ApiError):
    status = 404
    title = "Not found"


class Conflict(ApiError):
    status = 409
    title = "Conflict"


class IdempotencyConflict(Conflict):
    title = "Idempotency-Key reused with a different request"


class Unauthorized(ApiError):
    status = 401
    title = "Unauthorized"


class Forbidden(ApiError):
    status = 403
    title = "Forbidden"


class PayloadTooLarge(ApiError):
    status = 413
    title = "Payload too large"


class Unprocessable(ApiError):
    status = 422
    title = "Unprocessable request"


class TooManyRequests(ApiError):
    """The key sent more requests than its role's rate limit allows; retry after a while."""

    status = 429
    title = "Too many requests"

    def __init__(self, detail: str, *, retry_after: int, **extra: Any) -> None:
        super().__init__(detail, retry_after=retry_after, **extra)
        self.retry_after = retry_after
