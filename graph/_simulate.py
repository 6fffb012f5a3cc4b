"""The synthetic community (being written)."""

from __future__ import annotations

__all__ = ["simulate_bundle", "simulate_community"]


def simulate_community(n_persons, n_missions, seed=0):  # noqa: ANN001, ANN201
    raise NotImplementedError("simulate_community is being written")


def simulate_bundle(out_dir, n_persons, n_missions, seed=0, fmt="csv"):  # noqa: ANN001, ANN201
    raise NotImplementedError("simulate_bundle is being written")
