"""Property tests of `bolmo serve` from its own OpenAPI schema (schemathesis): valid and invalid
requests to every operation, a bounded and deterministic number of each, never a 5xx."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

import bolmo
from bolmo.serve import ServeConfig
from serve_helpers import model_dir_with_chat_template, serving

EXAMPLES = 12  # per operation and mode: 6 operations x 2 modes


@pytest.fixture(scope="module")
def running(tmp_path_factory):
    # Small limits keep every valid generation short.
    config = ServeConfig(model_name="bolmo", max_tokens=16, max_n=2, max_batch=4)
    with serving(bolmo.load(), config, model_dir_with_chat_template(tmp_path_factory.mktemp("chat"))) as server:
        yield server


@pytest.mark.parametrize("mode", [schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE])
def test_no_request_from_the_schema_makes_a_server_error(running, mode):
    schema = schemathesis.openapi.from_url(running.url + "/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/v1/completions", "/v1/chat/completions", "/v1/models", "/health"}
    if mode == schemathesis.GenerationMode.NEGATIVE:  # only a request body can be malformed here
        operations = [op for op in operations if op.method.upper() == "POST"]
    failures, statuses = [], set()
    for operation in operations:
        @settings(max_examples=EXAMPLES, derandomize=True, database=None, deadline=None,
                  suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy(generation_mode=mode))
        def check(case) -> None:
            response = case.call(base_url=running.url, timeout=60)
            statuses.add((case.path, response.status_code))
            if response.status_code >= 500:
                failures.append(f"{case.method} {case.path} {case.body!r} -> {response.status_code} {response.text}")

        check()
    assert not failures, "\n".join(failures[:5])
    if mode == schemathesis.GenerationMode.POSITIVE:  # valid requests really generated
        assert {("/v1/completions", 200), ("/v1/chat/completions", 200)} <= statuses, sorted(statuses)
