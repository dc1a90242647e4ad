"""Exceptions raised by crm-ledger.

Every error the service raises on purpose derives from `LedgerError`; where a builtin fits, the
subclass derives from it too, so callers may catch either.

    LedgerError
    ├── ConfigError(ValueError)           settings that cannot work (e.g. dev keys off chain 31337)
    ├── KeyUnavailable                    sealed personal data no configured master key opens
    ├── InvalidProof(ValueError)          a Merkle proof that cannot belong to the tree it claims
    ├── FormatError(ValueError)           bytes that are not a valid leaf input / receipt / digest
    ├── MappingError(ValueError)          a shop delivery that cannot be mapped to records
    ├── Unavailable(ConnectionError)      something a worker needs is down: back off, retry later
    │   └── BrokerUnavailable                the message broker (NATS) did not take a batch
    ├── WorkerHalted                      a background worker cannot go on until an operator acts
    ├── ChainError                        the chain did something we cannot work with
    │   ├── ChainUnavailable(Unavailable)      the node cannot be reached (retry later)
    │   ├── ChainReset                       the contract or genesis we deployed to is gone
    │   ├── AnchorRejected                   the contract reverted an anchor transaction
    │   └── AnchorFeeCapReached(Unavailable) a stuck anchor cannot be outbid within the fee cap
    ├── SalesforceError                   Salesforce refused a request or a job (see the message)
    │   └── SalesforceUnavailable(Unavailable)  Salesforce cannot be reached (retry later)
    └── RequestError                      a request that cannot be done as asked; the API maps
        │                                   each kind to a status (`api.problems.PROBLEM_KINDS`)
        ├── BadRequest / NotFound / Conflict / Unauthorized / Forbidden / PayloadTooLarge
        ├── Unprocessable                   well-formed, but its values cannot be accepted
        ├── IdempotencyConflict(Conflict)   same Idempotency-Key, different request
        ├── TooManyRequests                 over the key's rate limit (carries `retry_after`)
        ├── TryLater                        something it needs (the chain) is down right now
        └── Gone                            what the request concerned was erased or pruned
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


class AnchorFeeCapReached(ChainError, Unavailable):
    """A stuck anchor transaction needs a fee above the configured cap to be replaced; the
    anchorer keeps waiting (backed off, the message in `/readyz`) until it is mined or the cap
    is raised: writes still commit, so the service stays ready."""

    def __init__(self, message: str, *, needed_wei: int, cap_wei: int) -> None:
        super().__init__(message)
        self.needed_wei = needed_wei
        self.cap_wei = cap_wei


class RequestError(LedgerError):
    """A request that cannot be carried out as asked; `detail` says why and what to do.

    These are the domain's words ("not found", "conflict"), not HTTP's: the API maps each kind
    to its status and title in one place (`api.problems.PROBLEM_KINDS`), the CLI prints the
    detail. `extra` members (field errors, ids) travel with it into the problem document.
    """

    def __init__(self, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra


class BadRequest(RequestError):
    """The request is malformed in a way no field-by-field check describes."""


class NotFound(RequestError):
    """What the request names does not exist (or the caller may not know it does)."""


class Conflict(RequestError):
    """The request contradicts the journal's current state."""


class IdempotencyConflict(Conflict):
    """An Idempotency-Key sent again with a different request."""


class Unauthorized(RequestError):
    """No credentials, or credentials that are not valid."""


class Forbidden(RequestError):
    """Valid credentials whose role may not do this."""


class PayloadTooLarge(RequestError):
    """A body over the configured size limit."""


class Unprocessable(RequestError):
    """A well-formed request whose values cannot be accepted."""


class TooManyRequests(RequestError):
    """The key sent more requests than its role's rate limit allows; retry after a while."""

    def __init__(self, detail: str, *, retry_after: int, **extra: Any) -> None:
        super().__init__(detail, retry_after=retry_after, **extra)
        self.retry_after = retry_after


class TryLater(RequestError):
    """Something the request needs (the chain node) cannot be reached now; nothing was done."""


class Gone(RequestError):
    """What the request concerned existed and was erased or pruned."""


class SalesforceError(LedgerError):
    """Salesforce refused a request, a login or a whole job; the message says what it said."""


class SalesforceUnavailable(SalesforceError, Unavailable):
    """Salesforce cannot be reached or answered 5xx / 429; the sync retries later."""


class BrokerUnavailable(Unavailable):
    """The message broker cannot be reached or did not acknowledge; the relay retries later."""


# Personal data (issue 10) ---------------------------------------------------------------------


class KeyUnavailable(LedgerError):
    """Sealed personal data that the configured master key(s) cannot open."""
