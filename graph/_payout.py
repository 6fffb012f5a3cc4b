"""Pay rules: from a measured outcome to success and payout.

The payout is never set by hand: it is computed here when an outcome is verified, and a
bundle whose payout differs from what this module gives is refused.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["PayRule", "payout_for", "progress", "success_for", "CENT"]

CENT = 0.005  # tolerance when comparing a stated payout with the computed one

# A linear mission counts as a success once half of the way from baseline to target is
# covered: the label the ranker learns from, independent of how much is paid.
LINEAR_SUCCESS_PROGRESS = 0.5


@dataclass(frozen=True)
class PayRule:
    """The part of a mission that decides success and pay."""

    pay_rule: str  # per_unit | threshold | linear
    direction: str  # increase | decrease
    baseline: float
    target: float
    unit_price: float | None = None
    fee: float | None = None
    contract_cap: float | None = None

    @classmethod
    def of(cls, mission) -> PayRule:  # noqa: ANN001
        """The pay rule of a mission: a ``Mission`` row, a mapping or any object with its
        columns. A mission drafted without terms is paid a threshold fee on 0 -> 1."""
        get = mission.get if isinstance(mission, dict) else (
            lambda k: getattr(mission, k, None))
        baseline, target = get("baseline"), get("target")
        return cls(pay_rule=get("pay_rule") or "threshold",
                   direction=get("direction") or "increase",
                   baseline=float(baseline) if baseline is not None else 0.0,
                   target=float(target) if target is not None else 1.0,
                   unit_price=get("unit_price"), fee=get("fee"),
                   contract_cap=get("contract_cap"))


def progress(rule: PayRule, value: float) -> float:
    """Share of the way from baseline to target reached by ``value``, clipped to [0, 1]."""
    span = rule.target - rule.baseline
    if span == 0:
        return 1.0 if _target_met(rule, value) else 0.0
    return min(1.0, max(0.0, (value - rule.baseline) / span))


def _target_met(rule: PayRule, value: float) -> bool:
    if rule.direction == "decrease":
        return value <= rule.target
    return value >= rule.target


def success_for(rule: PayRule, value: float) -> bool:
    """Whether a measured value counts as a success (the training label).

    - ``per_unit``: at least one unit (``value > 0``);
    - ``threshold``: the target is met (in the mission's direction);
    - ``linear``: at least half of the way from baseline to target.
    """
    if rule.pay_rule == "per_unit":
        return value > 0
    if rule.pay_rule == "threshold":
        return _target_met(rule, value)
    if rule.pay_rule == "linear":
        return progress(rule, value) >= LINEAR_SUCCESS_PROGRESS
    raise ValueError(f"unknown pay_rule {rule.pay_rule!r}")


def payout_for(rule: PayRule, value: float, already_paid: float = 0.0) -> float:
    """Payout of one verified outcome, in currency units rounded to the cent.

    The total paid on a mission never exceeds ``contract_cap``: ``already_paid`` is what
    the mission's earlier verified outcomes received.

    Examples
    --------
    >>> payout_for(PayRule("per_unit", "increase", 0, 10, unit_price=50.0), 2)
    100.0
    >>> payout_for(PayRule("threshold", "decrease", 0.2, 0.1, fee=900.0), 0.09)
    900.0
    >>> payout_for(PayRule("linear", "increase", 0, 10, fee=1000.0, contract_cap=600.0), 8)
    600.0
    """
    if rule.pay_rule == "per_unit":
        raw = (rule.unit_price or 0.0) * max(0.0, value)
    elif rule.pay_rule == "threshold":
        raw = (rule.fee or 0.0) if _target_met(rule, value) else 0.0
    elif rule.pay_rule == "linear":
        raw = (rule.fee or 0.0) * progress(rule, value)
    else:
        raise ValueError(f"unknown pay_rule {rule.pay_rule!r}")
    if rule.contract_cap is not None:
        raw = min(raw, max(0.0, rule.contract_cap - already_paid))
    return round(raw, 2)
