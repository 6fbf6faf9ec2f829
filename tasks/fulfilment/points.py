"""Points fulfilment: credit a reward's points to the internal ledger as one lot."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from tasks.fulfilment import Event, Grant, Outcome, Result


@dataclass(frozen=True)
class Credit:
    """Points to add to a customer's balance as a new lot named after the reward."""

    lot_key: str
    customer_key: str
    points: int


class PointsLedger(Protocol):
    """The internal points ledger (rows in the store)."""

    def credit(self, credits: Sequence[Credit]) -> None:
        """Add each lot's earn entry in one transaction; a lot credited before is left as it is."""
        ...


class PointsFulfiller:
    """Fulfils points rewards by crediting the ledger; clawbacks are booked by the ledger's owner."""

    def __init__(self, ledger: PointsLedger) -> None:
        self.ledger = ledger

    def fulfil(self, grants: Sequence[Grant]) -> list[Result]:
        """Credit every valid grant in one batch; a grant without points fails."""
        results: dict[str, Result] = {}
        credits = []
        for grant in grants:
            if grant.event is not Event.GRANTED:
                # Points are reversed in the store together with the reward's status, not here.
                results[grant.reward_key] = Result(grant.reward_key, Outcome.FULFILLED, "ledger")
            elif not grant.points or grant.points <= 0:
                results[grant.reward_key] = Result(
                    grant.reward_key, Outcome.FAILED, error="no points to credit"
                )
            else:
                credits.append(Credit(grant.reward_key, grant.customer_key, grant.points))
        if credits:
            self.ledger.credit(credits)
            for credit in credits:
                results[credit.lot_key] = Result(credit.lot_key, Outcome.FULFILLED, f"points:{credit.points}")
        return [results[g.reward_key] for g in grants]
