"""What runs beside the API in one process: the chain node (when embedded) and the anchorer.

Exports: `Runtime`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from crm_ledger.config import Settings


@dataclass
class Runtime:
    """Process-wide state shared by the API handlers and the background tasks."""

    settings: Settings
    engine: Engine
    session_factory: sessionmaker[Session]
    chain_status: dict[str, object] = field(default_factory=dict)

    async def start(self) -> None:
        """Start the chain node (if embedded), deploy or check contracts, start the anchorer."""

    async def stop(self) -> None:
        """Stop background tasks and the embedded chain node."""
