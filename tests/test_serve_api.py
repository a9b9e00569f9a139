"""`bolmo serve` through the official OpenAI client and plain HTTP: completions (string and list
prompts, n, seeds, stop strings, streaming, usage in bytes, echo + per-byte logprobs in the shape
lm-eval's local-completions reads), chat completions with the model's template, errors as
OpenAI error objects, the API key, the bounded queue (429), a disconnecting client freeing its
row, metrics, and the CLI."""

from __future__ import annotations

import codecs
import json
import subprocess
import sys

import httpx
import openai
import pytest

import bolmo
from bolmo.cli import main
from bolmo.scoring import score_texts
from bolmo.serve import ServeConfig
from serve_helpers import cli_server, model_dir_with_chat_template, serving, wait_for

NAME = "toy"


@pytest.fixture(scope="module")
def model():
    return bolmo.load()


@pytest.fixture(scope="module")
def server(model, tmp_path_factory):
    model_dir = model_dir_with_chat_template(tmp_path_factory.mktemp("chat"))
    with serving(model, ServeConfig(model_name=NAME, max_tokens=512), model_dir) as running:
        yield running


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.v1, api_key="none", max_retries=0, timeout=120)


def metric(server, name: str) -> float:
    for line in httpx.get(server.url + "/metrics").text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in /metrics")


def test_models_lists_the_served_model(client):
    assert [m.id for m in client.models.list().data] == [NAME]


def test_greedy_completion_equals_generate_and_counts_bytes(model, client):
    prompt = "The json module"
    expected = model.generate([prompt], max_new_bytes=40)[0]
    out = client.completions.create(model=NAME, prompt=prompt, max_tokens=40, temperature=0)
    assert out.choices[0].text == expected
    assert out.choices[0].finish_reason == "length"
    assert out.usage.prompt_tokens == len(prompt.encode()) and out.usage.completion_tokens == len(expected.encode())
    assert out.usage.model_extra["token_unit"] == "byte"


def test_prompt_lists_n_seeds_and_stop(model, client):
    prompts = ["import os", "héllo"]
    expected = model.generate(prompts, max_new_bytes=20)
    out = client.completions.create(model=NAME, prompt=prompts, max_tokens=20, temperature=0, n=2)
    assert [c.index for c in out.choices] == [0, 1, 2, 3]
    assert [c.text for c in out.choices] == [expected[0], expected[0], expected[1], expected[1]]
    # choice i of a seeded request is seeded with seed + i, as `generate` seeds row i
    sampled = client.completions.create(model=NAME, prompt="The", max_tokens=30, temperature=1.0, top_p=0.9,
                                        seed=7, n=2, extra_body={"top_k": 20})
    alone = [model.generate(["The"], max_new_bytes=30, temperature=1.0, top_p=0.9, top_k=20, seed=7 + i)[0]
             for i in range(2)]
    assert [c.text for c in sampled.choices] == alone
    full = model.generate(["The json module"], max_new_bytes=40)[0]
    stop = full[10:13]
    out = client.completions.create(model=NAME, prompt="The json module", max_tokens=40, temperature=0, stop=[stop])
    assert out.choices[0].text == full[: full.index(stop)] and out.choices[0].finish_reason == "stop"


def test_streaming_concatenates_to_the_plain_response_with_usage_last(client):
    kwargs = dict(model=NAME, prompt="def f(x):", max_tokens=60, temperature=0)
    plain = client.completions.create(**kwargs).choices[0].text
    chunks = list(client.completions.create(stream=True, stream_options={"include_usage": True}, **kwargs))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == plain
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == len(plain.encode())


def test_usage_counts_every_choice_and_every_prompt_even_identical_ones(client):
    """Streamed usage collected choices by equality, so two choices with the same text (greedy n=2,
    or equal prompts) counted once; prompts were counted once per distinct text."""
    prompt = "def f(x):"
    kwargs = dict(model=NAME, max_tokens=20, temperature=0)
    for prompts, n in (([prompt], 2), ([prompt, prompt], 1), ([prompt, prompt], 2)):
        expected = {"prompt_tokens": len(prompts) * len(prompt), "completion_tokens": len(prompts) * n * 20}
        plain = client.completions.create(prompt=prompts, n=n, **kwargs).usage
        chunks = list(client.completions.create(prompt=prompts, n=n, stream=True,
                                                stream_options={"include_usage": True}, **kwargs))
        for got in (plain, chunks[-1].usage):
            assert {"prompt_tokens": got.prompt_tokens, "completion_tokens": got.completion_tokens} == expected


def test_echo_logprobs_are_the_scored_bytes_in_lm_eval_shape(model, client):
    context, continuation = "The json module ", "encodes"
    out = client.completions.create(model=NAME, prompt=context + continuation, max_tokens=1, temperature=0,
                                    echo=True, logprobs=1)
    choice = out.choices[0]
    logprobs = choice.logprobs
    n = len((context + continuation).encode())
    assert choice.text.startswith(context + continuation) and len(logprobs.tokens) == n + 1
    scored = score_texts(model, [context + continuation])[0].byte_logprobs.tolist()
    assert logprobs.token_logprobs[:n] == pytest.approx(scored, abs=1e-4)
    # what lm-eval's local-completions does with a byte-level context length
    ctxlen = len(context.encode())
    total = sum(logprobs.token_logprobs[ctxlen:-1])
    assert total == pytest.approx(sum(scored[ctxlen:]), abs=1e-3)
    # is_greedy compares each byte's log-prob with the best of top_logprobs (one entry each here)
    assert all(len(top) == 1 and max(top.values()) >= lp - 1e-6
               for lp, top in zip(logprobs.token_logprobs, logprobs.top_logprobs))
    assert logprobs.text_offset[:3] == [0, 1, 2]


def test_non_ascii_bytes_are_named_as_bytes_tokens(client):
    out = client.completions.create(model=NAME, prompt="é", max_tokens=0, echo=True, logprobs=0)
    assert out.choices[0].logprobs.tokens == ["bytes:\\xc3", "bytes:\\xa9"]
    assert out.choices[0].logprobs.text_offset == [0, 0]  # both bytes belong to the character at 0


def test_text_offset_is_that_of_the_character_a_byte_belongs_to(server):
    body = {"prompt": "Hé", "max_tokens": 2, "temperature": 0, "logprobs": 2, "echo": True}
    plain = httpx.post(server.v1 + "/completions", json=body, timeout=60).json()["choices"][0]
    assert plain["logprobs"]["tokens"][:3] == ["H", "bytes:\\xc3", "bytes:\\xa9"]
    assert plain["logprobs"]["text_offset"][:4] == [0, 1, 1, 2]
    with httpx.stream("POST", server.v1 + "/completions", json={**body, "stream": True}, timeout=60) as response:
        chunks = [json.loads(line[6:])["choices"][0] for line in response.iter_lines() if line.startswith("data: {")]
    assert [o for c in chunks for o in c["logprobs"]["text_offset"]] == plain["logprobs"]["text_offset"]


@pytest.mark.parametrize("data,offsets", [
    ("Hé L".encode(), [0, 1, 1, 2, 3]),
    ("a€😀b".encode(), [0, 1, 1, 1, 2, 2, 2, 2, 3]),
    (b"\xe2\x82x", [0, 0, 1]),  # an invalid sequence: one U+FFFD
    (b"\xc3\xc3a", [0, 1, 2]),
    (b"a\xf0\x9f", [0, 1, 1]),  # an incomplete last character
])
def test_text_offsets_follow_the_decoded_text_streamed_or_not(data, offsets):
    from bolmo.serve.responses import ChoiceText, text_offsets
    from bolmo.serve.scheduler import Update

    assert text_offsets(data) == offsets
    decoder, streamed = codecs.getincrementaldecoder("utf-8")(errors="replace"), ChoiceText()
    for i in range(len(data)):  # one byte per update, as a stream receives them
        streamed.add(Update(0, decoder.decode(data[i:i + 1], final=i == len(data) - 1), data[i:i + 1], [], []), False)
    assert streamed.offsets == offsets and streamed.text == data.decode("utf-8", "replace")


def test_chat_uses_the_models_template(model, client):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is json?"}]
    prompt = "<|system|>\nBe brief.\n<|user|>\nWhat is json?\n<|assistant|>\n"
    expected = model.generate([prompt], max_new_bytes=30)[0]
    out = client.chat.completions.create(model=NAME, messages=messages, max_tokens=30, temperature=0)
    assert out.choices[0].message.role == "assistant" and out.choices[0].message.content == expected
    chunks = list(client.chat.completions.create(model=NAME, messages=messages, max_tokens=30, temperature=0,
                                                 stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == expected
    # OpenAI's list-of-parts content: text parts joined by newlines.
    parts = [{"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
             {"role": "user", "content": [{"type": "text", "text": "What is"}, {"type": "text", "text": "json?"}]}]
    out = client.chat.completions.create(model=NAME, messages=parts, max_tokens=30, temperature=0)
    split = model.generate([prompt.replace("What is json?", "What is\njson?")], max_new_bytes=30)[0]
    assert out.choices[0].message.content == split
    # A conversation longer than the model's context: a 400 naming the messages.
    with pytest.raises(openai.BadRequestError, match="context_length_exceeded|this model has 576") as long:
        client.chat.completions.create(model=NAME, messages=[{"role": "user", "content": "x" * 600}], max_tokens=3)
    assert long.value.body["param"] == "messages"
    # Log-probabilities are not offered on chat: a 400, not a silent null.
    with pytest.raises(openai.BadRequestError, match="log-probabilities"):
        client.chat.completions.create(model=NAME, messages=messages, max_tokens=3, logprobs=True, top_logprobs=2)


def test_chat_without_a_template_is_a_clear_400(model):
    with serving(model, ServeConfig(model_name=NAME)) as running:
        r = httpx.post(running.v1 + "/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "no_chat_template" and "chat template" in r.json()["error"]["message"]


def test_a_template_that_rejects_the_messages_is_a_400(model, tmp_path):
    model_dir = model_dir_with_chat_template(tmp_path)
    strict = "{% for m in messages %}{% if m.role == 'system' %}{{ raise_exception('no system turns') }}{% endif %}" \
             "{{ m.content }}{% endfor %}"
    (model_dir / "tokenizer_config.json").write_text(json.dumps({"chat_template": strict}))
    with serving(model, ServeConfig(model_name=NAME), model_dir) as running:
        r = httpx.post(running.v1 + "/chat/completions", json={"messages": [{"role": "system", "content": "x"}]})
    assert r.status_code == 400 and "no system turns" in r.json()["error"]["message"]
    assert r.json()["error"]["param"] == "messages"


BAD = [
    ("{not json", "not valid JSON", None),
    (json.dumps({"prompt": 3}), "prompt: Input should be a valid string", "prompt"),  # not pydantic's "prompt.str"
    (json.dumps({"prompt": "x", "max_tokens": "3"}), "max_tokens", "max_tokens"),
    (json.dumps({"prompt": "x", "temperature": 2.5}), "temperature", "temperature"),
    (json.dumps({"prompt": "x", "top_p": 0}), "top_p", "top_p"),
    (json.dumps({"prompt": "x", "max_tokens": -1}), "max_tokens", "max_tokens"),
    (json.dumps({"prompt": "x", "max_tokens": 100_000}), "max_tokens", "max_tokens"),
    (json.dumps({"prompt": "x", "n": 100}), "n", "n"),
    (json.dumps({"prompt": "x" * 20_000}), "limit", "prompt"),
    (json.dumps({"prompt": "x" * 600}), "needs 601 positions (the start id and its ids); this model has 576", "prompt"),
    (json.dumps({"prompt": []}), "non-empty", "prompt"),
    (json.dumps({"prompt": "x", "stop": ["a", "b", "c", "d", "e"]}), "stop", "stop"),
    (json.dumps({"prompt": "x", "stop": [""]}), "non-empty", "stop"),
    (json.dumps({"prompt": "\ud800"}), "Unicode", "prompt"),
    (json.dumps([1, 2]), "body", None),
]


@pytest.mark.parametrize("body,needle,param", BAD)
def test_bad_input_gets_a_400_error_object(server, body, needle, param):
    r = httpx.post(server.v1 + "/completions", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert needle in error["message"] and error["type"] == "invalid_request_error" and error["param"] == param


NULLS = {"model": None, "max_tokens": None, "temperature": None, "top_p": None, "top_k": None, "seed": None,
         "stop": None, "n": None, "stream": None, "stream_options": None}


def test_a_body_without_a_json_content_type_is_told_so(server):
    r = httpx.post(server.v1 + "/completions", content='{"prompt": "x"}',
                   headers={"Content-Type": "application/x-www-form-urlencoded"})  # what `curl -d` sends
    assert r.status_code == 400 and "Content-Type: application/json" in r.json()["error"]["message"]


def test_null_optional_fields_take_their_defaults(server):
    from bolmo.serve.schemas import CompletionRequest

    body = {**NULLS, "prompt": "x", "echo": None, "logprobs": None, "return_patches": None}
    assert CompletionRequest.model_validate(body) == CompletionRequest(prompt="x")
    r = httpx.post(server.v1 + "/completions", json=body, timeout=60)
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    assert r.json()["usage"]["completion_tokens"] == 16 and choice["logprobs"] is None and "bolmo" not in choice
    chat = {**NULLS, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4,
            "stream_options": {"include_usage": None}}
    r = httpx.post(server.v1 + "/chat/completions", json=chat, timeout=60)
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 4, r.text


@pytest.mark.parametrize("route,body,param", [
    ("/completions", {"prompt": None}, "prompt"),
    ("/chat/completions", {"messages": None}, "messages"),
    ("/chat/completions", {"messages": [{"role": "user", "content": None}]}, "messages"),
])
def test_a_required_field_sent_as_null_is_a_400(server, route, body, param):
    r = httpx.post(server.v1 + route, json=body)
    assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text


def test_unknown_model_and_route_are_404_and_the_server_lives_on(server):
    r = httpx.post(server.v1 + "/completions", json={"model": "gpt-4", "prompt": "x"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    assert httpx.get(server.url + "/nowhere").status_code == 404
    assert httpx.get(server.url + "/health").json() == {"status": "ok"}


def test_the_api_key_guards_every_route_but_health(model):
    with serving(model, ServeConfig(model_name=NAME, api_key="sesame")) as running:
        for path in ("/v1/models", "/metrics", "/", "/openapi.json"):
            r = httpx.get(running.url + path)
            assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        assert httpx.get(running.url + "/health").status_code == 200
        assert httpx.get(running.url + "/?key=sesame").status_code == 200
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=running.v1, api_key="wrong", max_retries=0).models.list()
        good = openai.OpenAI(base_url=running.v1, api_key="sesame", max_retries=0)
        assert good.completions.create(model=NAME, prompt="a", max_tokens=3).usage.completion_tokens == 3
        for header in ("bearer sesame", "BEARER sesame"):  # the scheme's case does not matter (RFC 7235)
            assert httpx.get(running.v1 + "/models", headers={"Authorization": header}).status_code == 200
        assert httpx.get(running.v1 + "/models", headers={"Authorization": "Basic sesame"}).status_code == 401


def test_a_full_queue_answers_429_and_a_disconnect_frees_the_row(model):
    config = ServeConfig(model_name=NAME, max_batch=1, max_queue=1, max_tokens=4096)
    with serving(model, config) as running, httpx.Client(timeout=120) as http:
        long = {"prompt": "The", "max_tokens": 4096, "temperature": 0, "stream": True}
        with http.stream("POST", running.v1 + "/completions", json=long) as first:
            lines = first.iter_lines()  # kept: a dropped line iterator closes the response
            next(lines)  # running: it holds the only row
            wait_for(lambda: metric(running, "bolmo_batch_size") == 1, "the first request to run")
            waiting = subprocess.Popen([sys.executable, "-c", f"import httpx; print(httpx.post('{running.v1}/completions', "
                                        "json={'prompt': 'x', 'max_tokens': 5, 'temperature': 0}, timeout=120).json()"
                                        "['choices'][0]['finish_reason'])"], stdout=subprocess.PIPE, text=True)
            wait_for(lambda: metric(running, "bolmo_queue_depth") == 1, "the second request to queue")
            r = http.post(running.v1 + "/completions", json={"prompt": "x", "max_tokens": 5})
            assert r.status_code == 429 and r.json()["error"]["type"] == "rate_limit_error"
        # the first client went away mid-stream: its row is freed and the queued request runs
        assert waiting.communicate(timeout=120)[0].strip() == "length"
        wait_for(lambda: metric(running, "bolmo_batch_size") == 0, "the batch to empty")
        assert metric(running, "bolmo_generated_bytes_total") < 4096 + 5


def test_metrics_and_page(server, client):
    client.completions.create(model=NAME, prompt="a", max_tokens=4)
    text = httpx.get(server.url + "/metrics").text
    for name in ("bolmo_requests_total", "bolmo_generated_bytes_total", "bolmo_queue_depth", "bolmo_batch_size",
                 "bolmo_request_latency_seconds_bucket", "bolmo_time_to_first_byte_seconds_bucket"):
        assert name in text
    assert 'bolmo_requests_total{route="/v1/completions",status="200"}' in text
    assert 'bolmo_request_latency_seconds_count{route="/v1/completions"}' in text  # one spelling of a route
    assert 'bolmo_time_to_first_byte_seconds_count{route="/v1/completions"}' in text
    page = httpx.get(server.url + "/")
    assert page.status_code == 200 and "return_patches" in page.text


def test_nan_and_infinite_numbers_are_called_what_they_are(server):
    for field, value in (("temperature", "NaN"), ("top_p", "Infinity"), ("temperature", "-Infinity")):
        r = httpx.post(server.v1 + "/completions", content=f'{{"prompt": "x", "{field}": {value}}}',
                       headers={"Content-Type": "application/json"})
        error = r.json()["error"]
        assert r.status_code == 400 and error["param"] == field and "finite number" in error["message"], error


def test_cli_serves_the_bundled_model():
    with cli_server("--max-batch", "4") as (_, base):
        models = httpx.get(base + "/v1/models").json()["data"]
        assert [m["id"] for m in models] == ["bolmo-default"]


def test_cli_rejects_bad_options_with_exit_2(capsys):
    assert main(["serve", "--max-batch", "0"]) == 2
    assert "--max-batch must be at least 1" in capsys.readouterr().err


def test_cli_that_cannot_listen_fails_before_loading_the_model(monkeypatch, capsys):
    import socket

    from bolmo.cli import model_commands

    def load(args):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(model_commands, "load_from_args", load)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", "--port", str(port)]) == 2
    assert capsys.readouterr().err.startswith(f"bolmo serve: error: cannot listen on 127.0.0.1:{port}: ")
    assert main(["serve", "--host", "256.1.1.1", "--port", "8000"]) == 2
    assert capsys.readouterr().err.startswith("bolmo serve: error: cannot listen on 256.1.1.1:8000: ")


def test_listen_binds_every_address_of_the_host_on_one_port():
    from bolmo.cli.serve_commands import listen

    sockets = listen("localhost", 0)
    try:
        ports = {sock.getsockname()[1] for sock in sockets}
        assert len(ports) == 1 and 0 not in ports
    finally:
        for sock in sockets:
            sock.close()


def test_a_subword_olmo_model_is_served_too(tmp_path):
    from olmo_helpers import build_hf_model, save_hf_model

    olmo = bolmo.load(save_hf_model(build_hf_model("olmo3"), tmp_path / "olmo3"))
    expected = olmo.generate(["hello world"], max_new_bytes=20)[0]
    with serving(olmo, ServeConfig(model_name=NAME)) as running:
        client = openai.OpenAI(base_url=running.v1, api_key="none", max_retries=0)
        out = client.completions.create(model=NAME, prompt="hello world", max_tokens=20, temperature=0)
        assert out.choices[0].text == expected
        r = httpx.post(running.v1 + "/completions", json={"prompt": "x", "logprobs": 1})
        assert r.status_code == 400 and r.json()["error"]["param"] == "logprobs"


def test_return_patches_gives_the_models_boundaries(model, server):
    from bolmo.generation import generate_ids

    expected = generate_ids(model, ["The json module"], 30)[0]
    r = httpx.post(server.v1 + "/completions", json={"prompt": "The json module", "max_tokens": 30,
                                                     "temperature": 0, "return_patches": True}, timeout=60)
    patches = r.json()["choices"][0]["bolmo"]
    assert patches == {"prompt_patch_ends": expected.prompt_boundaries, "patch_ends": expected.boundaries}
    with httpx.stream("POST", server.v1 + "/completions", timeout=60,
                      json={"prompt": "The json module", "max_tokens": 30, "temperature": 0, "stream": True,
                            "return_patches": True}) as response:
        chunks = [json.loads(line[6:])["choices"][0]["bolmo"] for line in response.iter_lines()
                  if line.startswith("data: {")]
    assert chunks[0]["prompt"] and chunks[0]["patch_ends"] == expected.prompt_boundaries
    assert bytes(b for c in chunks[1:] for b in c["bytes"]) == expected.data
    assert [e for c in chunks[1:] for e in c["patch_ends"]] == expected.boundaries


def test_a_failing_step_fails_its_requests_not_the_server(model):
    with serving(model, ServeConfig(model_name=NAME)) as running:
        engine = running.app.state.server.scheduler.engine

        def broken(*args):
            raise RuntimeError("simulated device failure")

        engine.step = broken  # an instance attribute shadows the method
        r = httpx.post(running.v1 + "/completions", json={"prompt": "a", "max_tokens": 5}, timeout=60)
        assert r.status_code == 500 and "simulated device failure" in r.json()["error"]["message"]
        with httpx.stream("POST", running.v1 + "/completions", timeout=60,
                          json={"prompt": "a", "max_tokens": 5, "stream": True}) as response:
            events = [line for line in response.iter_lines() if line.startswith("data: ")]
        assert "simulated device failure" in events[-2] and events[-1] == "data: [DONE]"
        del engine.step
        out = httpx.post(running.v1 + "/completions", json={"prompt": "a", "max_tokens": 5}, timeout=60).json()
        assert out["usage"]["completion_tokens"] == 5


def test_a_bundled_model_has_one_served_id_however_it_is_named(tmp_path, monkeypatch):
    from bolmo.cli.serve_commands import served_model_name

    assert served_model_name(None, None) == served_model_name(None, "default") == "bolmo-default"
    assert served_model_name(None, "default-teacher") == "bolmo-default-teacher"
    assert served_model_name("mine", "default") == "mine"
    assert served_model_name(None, "allenai/Bolmo-1B") == "allenai/Bolmo-1B"
    (tmp_path / "default").mkdir()  # a local directory of that name is not the bundled model
    monkeypatch.chdir(tmp_path)
    assert served_model_name(None, "default") == "default"


def test_a_prompt_that_fills_the_context_is_served_one_more_byte_is_refused(server):
    """The bundled model has 576 positions: BOS and 575 prompt bytes fit (new bytes may run past)."""
    ok = httpx.post(server.v1 + "/completions", json={"prompt": "x" * 575, "max_tokens": 2}, timeout=120)
    assert ok.status_code == 200 and ok.json()["usage"]["prompt_tokens"] == 575
    refused = httpx.post(server.v1 + "/completions", json={"prompt": "x" * 576, "max_tokens": 2}, timeout=120)
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "context_length_exceeded"
