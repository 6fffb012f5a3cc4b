"""schemathesis against the app's own OpenAPI: every operation, positive and negative data,
a bounded number of examples each, every default check (no 500, statuses, headers and bodies
as declared, negative data refused, positive data accepted).

One check is narrowed: positive data may be refused with a 422 when the refusal is a rule
that OpenAPI cannot state (a validator's "Value error", such as "give exactly one of" or
"starts_at is after ends_at", or a check against the store, such as an unknown vocabulary
value). A type, format, missing or unknown field refused on schema-valid data still fails
it: that is the schema and the app disagreeing.

Integers written ``8.0`` (an integer by JSON Schema's definition) are accepted everywhere
(``service.schemas.Int``).

The app runs over the API city with the day-one model loaded; calls go in-process (ASGI).
Calls are made with the admin key (it passes every scope check but the engineer-only
special-category reads, which answer a declared 403) and, for the platform's endpoint,
with the platform key too.
"""

from __future__ import annotations

import os

import pytest
import schemathesis
from schemathesis import GenerationMode
from schemathesis.openapi.checks import RejectedPositiveData
from schemathesis.specs.openapi.checks import positive_data_acceptance
from support.api import KEYS, make_app, populate_api_city

from graph import open_store, sqlite_url

# Bounded: about 50 operations x this many examples per mode (fuzzing phase). The coverage
# phase (boundary values of every field, ~2,300 more calls, ~25 s) runs when asked:
# CRUNCH_SCHEMATHESIS_PHASES=examples,coverage,fuzzing.
MAX_EXAMPLES = int(os.environ.get("CRUNCH_SCHEMATHESIS_EXAMPLES", "8"))
PHASES = os.environ.get("CRUNCH_SCHEMATHESIS_PHASES", "examples,fuzzing").split(",")


@pytest.fixture
def api_schema(tmp_path):
    url = sqlite_url(tmp_path / "store.db")
    seed = open_store(url)
    populate_api_city(seed)
    seed.dispose()
    app = make_app(url, str(tmp_path / "home"))
    app.state.provider.load()  # what the lifespan does: the day-one model serves
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    schema.config.generation.update(
        max_examples=MAX_EXAMPLES, modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE],
        deterministic=True, database="none")
    schema.config.phases.update(phases=PHASES)
    yield schema
    app.state.store.dispose()


schema = schemathesis.pytest.from_fixture("api_schema")


def _rule_refusal(response) -> bool:  # noqa: ANN001
    """A 422 whose every error is a rule beyond the schema."""
    if response.status_code != 422:
        return False
    detail = response.json()["detail"]
    if isinstance(detail, str):  # raised by the app after the schema passed
        return True
    return all(e["message"].startswith("Value error, ") for e in detail)


def positive_data_acceptance_but_rules(ctx, response, case):  # noqa: ANN001, ANN201
    try:
        return positive_data_acceptance(ctx, response, case)
    except RejectedPositiveData:
        if _rule_refusal(response):
            return None
        raise


@schema.parametrize()
def test_api_conforms_to_its_openapi(case):
    scope = "platform" if case.path == "/v1/match" else "admin"
    response = case.call(headers={"X-API-Key": KEYS[scope]["key"]})
    case.validate_response(response, excluded_checks=[positive_data_acceptance],
                           additional_checks=[positive_data_acceptance_but_rules])
