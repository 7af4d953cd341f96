"""Budget guard: decide, before a client trains, whether the round keeps it within budget.

Check-then-commit: :meth:`BudgetGuard.check` computes epsilon of ``history + [planned]`` with the
same deterministic, order-independent accountant the report uses, and allows the round only if
that epsilon is <= the budget. The caller trains, then appends the event to the ledger; a
declined round is recorded as a ``declined`` ledger entry and nothing is trained.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from securefvpa.errors import AccountingError
from securefvpa.privacy.accountant import (
    DEFAULT_PLD_DISCRETIZATION,
    check_accountant,
    check_delta,
    check_discretization,
    epsilon,
)
from securefvpa.privacy.ddg import DdgEvent, PrivacyEvent
from securefvpa.privacy.events import DpSgdEvent, check_client_id


@dataclass(frozen=True)
class Decision:
    """Outcome of a budget check. ``allowed`` iff ``epsilon_if_trained <= budget``."""

    allowed: bool
    epsilon_now: float
    epsilon_if_trained: float
    budget: float
    reason: str


class BudgetGuard:
    """Refuses any round that would take a client's epsilon above ``budget_epsilon``."""

    def __init__(
        self,
        *,
        budget_epsilon: float,
        delta: float,
        accountant: str = "pld",
        value_discretization_interval: float = DEFAULT_PLD_DISCRETIZATION,
    ) -> None:
        if isinstance(budget_epsilon, bool) or not isinstance(budget_epsilon, int | float):
            raise AccountingError(f"budget_epsilon must be a number > 0. Found {budget_epsilon!r}.")
        if not (math.isfinite(budget_epsilon) and budget_epsilon > 0.0):
            raise AccountingError(
                f"budget_epsilon must be finite and > 0. Found {budget_epsilon!r}."
            )
        self.budget_epsilon = float(budget_epsilon)
        self.delta = check_delta(delta)
        self.accountant = check_accountant(accountant)
        self.value_discretization_interval = check_discretization(value_discretization_interval)

    def _eps(self, events: Sequence[PrivacyEvent]) -> float:
        return epsilon(
            events,
            self.delta,
            accountant=self.accountant,
            value_discretization_interval=self.value_discretization_interval,
        )

    def check(
        self, *, client_id: str, history: Sequence[PrivacyEvent], planned_event: PrivacyEvent
    ) -> Decision:
        """Decide whether ``client_id`` may run ``planned_event`` after ``history``."""
        check_client_id(client_id)
        if not isinstance(planned_event, DpSgdEvent | DdgEvent):
            raise AccountingError(
                f"planned_event must be a DpSgdEvent or a DdgEvent. Found {planned_event!r}."
            )
        for ev in [*history, planned_event]:
            if not isinstance(ev, DpSgdEvent | DdgEvent) or ev.client_id != client_id:
                raise AccountingError(
                    f"every event must belong to client {client_id!r}. Found {ev!r}."
                )
        if any(
            (ev.round, ev.attempt) == (planned_event.round, planned_event.attempt) for ev in history
        ):
            raise AccountingError(
                f"client {client_id!r} already trained in round {planned_event.round} "
                f"(attempt {planned_event.attempt}); a resumed run re-runs a round as a new attempt."
            )
        now = self._eps(list(history))
        after = self._eps([*history, planned_event])
        if after <= self.budget_epsilon:
            return Decision(True, now, after, self.budget_epsilon, "within budget")
        return Decision(
            False,
            now,
            after,
            self.budget_epsilon,
            f"epsilon would reach {after:.6g} > budget {self.budget_epsilon:.6g} "
            f"(delta={self.delta:g}, accountant={self.accountant})",
        )
