"""The one back-off every retry loop of the service uses: exponential, capped, with jitter.

Exports: `Backoff`.

Jitter keeps the workers of many processes (or many relays after a broker restart) from
retrying in step. The arithmetic is tenacity's `wait_exponential_jitter`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tenacity import RetryCallState, wait_exponential_jitter


@dataclass
class Backoff:
    """Pauses that grow from `initial` doubling up to `maximum`, each with up to `jitter` added.

    >>> backoff = Backoff(initial=0.2, maximum=5.0, jitter=0.0)
    >>> [backoff.next() for _ in range(3)], backoff.failures
    ([0.2, 0.4, 0.8], 3)
    """

    initial: float = 0.2
    maximum: float = 10.0
    jitter: float = 0.1
    failures: int = 0
    _wait: wait_exponential_jitter = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._wait = wait_exponential_jitter(
            multiplier=self.initial, max=self.maximum, exp_base=2, jitter=self.jitter
        )

    def next(self) -> float:
        """The pause before the next try (and count one more failure)."""
        self.failures += 1
        state = RetryCallState(retry_object=None, fn=None, args=(), kwargs={})  # type: ignore[arg-type]
        state.attempt_number = self.failures
        return min(float(self._wait(state)), self.maximum)

    def reset(self) -> None:
        """A success: the next failure starts from `initial` again."""
        self.failures = 0
