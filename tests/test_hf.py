"""bolmo.hf: transformers' Auto classes, generate(), streamers and pipelines on a directory laid
out as the released repos are (config.json and tokenizer_config.json with an `auto_map` pointing at
remote code). The remote code files here raise when executed, so every test also shows that
loading never runs them. Runs on transformers 5.x and 4.57.x (see the Makefile)."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import threading
from collections.abc import Mapping
from contextlib import redirect_stdout
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import bolmo
from bolmo.config import BYTE_OFFSET
from bolmo.errors import GenerationError
from bolmo.generation import generate_ids
from conftest import load_fixture_model, read_cases

transformers = pytest.importorskip("transformers")
from transformers import (  # noqa: E402
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    TextIteratorStreamer,
    TextStreamer,
    pipeline,
)

REMOTE_CODE = ["configuration_bolmo.py", "modeling_bolmo.py", "tokenization_bolmo.py", "utils_bolmo.py"]
AUTO_MAP = {"AutoConfig": "configuration_bolmo.BolmoConfig", "AutoModel": "modeling_bolmo.BolmoModel",
            "AutoModelForCausalLM": "modeling_bolmo.BolmoForCausalLM"}
CHAT_TEMPLATE = "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}<|assistant|>"
TEXTS = ["Hello", "", "Größe 大小 😀", "<bos> and <pad> are plain text here", "a\nb\tc"]


def released_layout(model_dir: Path, out: Path) -> Path:
    """`model_dir` as the released repos lay it out: auto_map entries, remote code, tokenizer config."""
    shutil.copytree(model_dir, out, ignore=shutil.ignore_patterns("cases.*"))
    config = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps(config | {"auto_map": AUTO_MAP}, indent=2))
    (out / "tokenizer_config.json").write_text(json.dumps({
        "auto_map": {"AutoTokenizer": ["tokenization_bolmo.BolmoTokenizer", None]},
        "tokenizer_class": "BolmoTokenizer", "chat_template": CHAT_TEMPLATE}))
    for name in REMOTE_CODE:
        (out / name).write_text(f"raise RuntimeError('remote code {name} was executed')\n")
    return out


@pytest.fixture(scope="module")
def repo(fixture_model_dir, tmp_path_factory) -> Path:
    return released_layout(fixture_model_dir, tmp_path_factory.mktemp("repo") / fixture_model_dir.name)


@pytest.fixture(scope="module")
def loaded(repo):
    """(transformers model, tokenizer, bolmo's own model) for the repo."""
    model = AutoModelForCausalLM.from_pretrained(repo)
    return model, AutoTokenizer.from_pretrained(repo), bolmo.load(repo)


def new_ids(out: torch.Tensor, prompt_len: int) -> list[int]:
    return out[0, prompt_len:].tolist()


# ------------------------------------------------------------------ loading
def test_auto_classes_give_bolmo_classes_without_remote_code(repo, loaded):
    from bolmo.hf.configuration import BolmoHFConfig
    from bolmo.hf.modeling import BolmoForCausalLM
    from bolmo.hf.tokenization import BolmoTokenizer

    model, tokenizer, _ = loaded
    assert type(AutoConfig.from_pretrained(repo)) is BolmoHFConfig
    assert type(model) is BolmoForCausalLM and isinstance(model, transformers.PreTrainedModel)
    assert type(tokenizer) is BolmoTokenizer and isinstance(tokenizer, transformers.PreTrainedTokenizer)
    assert not any(name.startswith("transformers_modules") for name in sys.modules)


def test_state_dict_names_are_the_checkpoints(repo, loaded):
    model, _, core = loaded
    assert set(model.state_dict()) == set(load_file(repo / "model.safetensors")) == set(core.state_dict())


def test_logits_are_bolmos_and_the_references(fixture_model_dir, loaded):
    model, _, core = loaded
    meta, cases = read_cases(fixture_model_dir)
    with torch.no_grad():
        for case in meta["forward"]:
            if "error" in case:
                continue
            ids = cases[f"fwd/{case['index']}/input_ids"]
            out = model(ids)
            assert torch.equal(out.logits, core(ids).logits)
            torch.testing.assert_close(out.logits, cases[f"fwd/{case['index']}/logits"], atol=1e-4, rtol=0)
            assert torch.equal(out.boundary_mask, cases[f"fwd/{case['index']}/boundary_mask"].bool())


def test_labels_give_the_mean_next_byte_loss(loaded):
    model, tokenizer, core = loaded
    text = "The quick brown fox"
    ids = tokenizer(text, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        loss = model(ids, labels=ids).loss
    expected = core.score([text])[0]
    assert loss.item() == pytest.approx(expected.nats / expected.n_bytes, rel=1e-5)
    from bolmo.errors import InputError

    with pytest.raises(InputError, match="labels must be plain ids in \\[0, 260\\) or -100, got 336"):
        model(torch.tensor([[1, 76, 109]]), labels=torch.tensor([[1, 336, 109]]))
    with pytest.raises(InputError, match="attention_mask is all zeros"):
        model(torch.tensor([[1, 76, 105]]), attention_mask=torch.zeros(1, 3))


def test_a_model_without_its_tokenizer_says_so(repo):
    from transformers import AutoConfig, AutoModelForCausalLM

    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(repo))
    with pytest.raises(GenerationError, match="no subword tokenizer"):
        model.generate(torch.tensor([[1, 76, 105]]), max_new_tokens=2)


# ------------------------------------------------------------------ generate
def test_greedy_generate_equals_reference_records(fixture_model_dir, loaded):
    model, tokenizer, _ = loaded
    meta, _ = read_cases(fixture_model_dir)
    checked = 0
    for case in meta["generate"]:
        if "error" in case:
            continue
        ids = tokenizer(case["prompt"], return_tensors="pt")["input_ids"]
        out = model.generate(ids, max_new_tokens=case["n_new_bytes"], do_sample=False)
        assert out[0, : ids.shape[1]].tolist() == ids[0].tolist()
        assert new_ids(out, ids.shape[1]) == case["continuation_ids"], f"gen/{case['index']}"
        checked += 1
    assert checked >= 1


def test_left_padded_batch_rows_equal_their_prompts_alone(fixture_model_dir, loaded):
    model, tokenizer, _ = loaded
    record = read_cases(fixture_model_dir)[0]["generate_batch"]
    prompts = record["prompts"] + [""]
    batch = tokenizer(prompts, return_tensors="pt", padding=True)
    assert tokenizer.padding_side == "left" and not batch["attention_mask"][:, -1].eq(0).any()
    out = model.generate(**batch, max_new_tokens=30, do_sample=False)
    width = batch["input_ids"].shape[1]
    assert torch.equal(out[:, :width], batch["input_ids"])
    for row, prompt in enumerate(prompts):
        alone = tokenizer(prompt, return_tensors="pt")["input_ids"]
        expected = new_ids(model.generate(alone, max_new_tokens=30), alone.shape[1])
        got = out[row, width:].tolist()
        assert got[: len(expected)] == expected and set(got[len(expected):]) <= {tokenizer.pad_token_id}


def test_sampling_follows_torch_seed_and_arguments(loaded):
    model, tokenizer, core = loaded
    ids = tokenizer("Once upon a time", return_tensors="pt")["input_ids"]
    args = dict(max_new_tokens=25, do_sample=True, temperature=0.8, top_k=40, top_p=0.9)
    torch.manual_seed(3)
    first = model.generate(ids, **args)
    torch.manual_seed(3)
    seed = int(torch.randint(0, 2**62, ()))  # what generate draws from torch's generator
    torch.manual_seed(3)
    assert torch.equal(model.generate(ids, **args), first)
    result = generate_ids(core, ["Once upon a time"], 25, temperature=0.8, top_k=40, top_p=0.9, seed=seed)[0]
    expected = [b + BYTE_OFFSET for b in result.data]
    assert new_ids(first, ids.shape[1]) == expected
    assert new_ids(model.generate(ids, max_new_tokens=25, do_sample=False), ids.shape[1]) != expected


def test_stop_strings_end_after_the_stop_string(loaded):
    model, tokenizer, _ = loaded

    def greedy(prompt: str) -> tuple[torch.Tensor, list[int]]:
        ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
        return ids, new_ids(model.generate(ids, max_new_tokens=40), ids.shape[1])

    ids, plain = greedy("Language modeling is ")
    data = bytes(i - 4 for i in plain)
    start = next(i for i in range(5, 30) if data[i:i + 2].isascii() and data[i:i + 2].decode().isprintable())
    stop = data[start:start + 2].decode()
    out = model.generate(ids, max_new_tokens=40, stop_strings=[stop, "never in the output"], tokenizer=tokenizer)
    assert new_ids(out, ids.shape[1]) == plain[: data.index(stop.encode()) + 2]

    # As in transformers, a stop string may begin in the prompt: the first new byte completes it.
    for prompt in ("a", "ab", "abc", "b", "c", "x", "xy", "z"):  # one whose first new byte is printable ASCII
        ids, plain = greedy(prompt)
        if 36 <= plain[0] < 127:
            break
    stop = prompt[-1] + chr(plain[0] - 4)
    assert new_ids(model.generate(ids, max_new_tokens=40, stop_strings=stop), ids.shape[1]) == plain[:1]


def test_max_new_tokens_counts_bytes_and_unsupported_settings_fail(loaded):
    model, tokenizer, _ = loaded
    ids = tokenizer("Größe", return_tensors="pt")["input_ids"]
    assert model.generate(ids, max_new_tokens=7).shape == (1, ids.shape[1] + 7)
    with pytest.raises(GenerationError, match="num_beams"):
        model.generate(ids, max_new_tokens=3, num_beams=2)
    with pytest.raises(GenerationError, match="not a byte id"):
        model.generate(torch.tensor([[1, 76, 2, 77]]), max_new_tokens=3)
    for setting in ({"suppress_tokens": [36]}, {"sequence_bias": {(36,): -1e9}}, {"max_time": 5.0},
                    {"forced_eos_token_id": 36}, {"renormalize_logits": True}, {"epsilon_cutoff": 1e-3}):
        with pytest.raises(GenerationError, match=next(iter(setting))):  # refused, never silently ignored
            model.generate(ids, max_new_tokens=3, **setting)


@pytest.mark.parametrize("fused", [False, True], ids=["byte-id", "fused-id"])
def test_eos_token_id_ends_a_row_after_that_byte(loaded, fused):
    model, tokenizer, _ = loaded
    ids = tokenizer(["Language modeling is ", "x"], return_tensors="pt", padding=True)
    plain = [new_ids(row[None], ids["input_ids"].shape[1])
             for row in model.generate(**ids, max_new_tokens=40, pad_token_id=0)]
    end = plain[0][5]  # a byte the first row generates; the second row may or may not
    out = model.generate(**ids, max_new_tokens=40, pad_token_id=0, eos_token_id=[end + 260 * fused, 999])
    for row, full in zip(out, plain):
        cut = full[: full.index(end) + 1] if end in full else full
        assert new_ids(row[None], ids["input_ids"].shape[1])[: len(cut)] == cut
        assert row[ids["input_ids"].shape[1] + len(cut):].eq(0).all()  # padded after it


def test_streamers_see_every_new_byte(loaded):
    model, tokenizer, _ = loaded
    ids = tokenizer("def fib(n):", return_tensors="pt")["input_ids"]
    out = model.generate(ids, max_new_tokens=40)
    text = tokenizer.decode(new_ids(out, ids.shape[1]), skip_special_tokens=True)

    printed = io.StringIO()
    with redirect_stdout(printed):
        streamed = model.generate(ids, max_new_tokens=40, streamer=TextStreamer(tokenizer, skip_prompt=True))
    assert torch.equal(streamed, out) and printed.getvalue() == text + "\n"

    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True)
    worker = threading.Thread(target=model.generate, args=(ids,), kwargs=dict(max_new_tokens=40, streamer=streamer))
    worker.start()
    assert "".join(streamer) == text
    worker.join()


def test_text_generation_pipeline(repo, loaded):
    model, tokenizer, _ = loaded
    prompt = "Language modeling is "
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    continuation = tokenizer.decode(new_ids(model.generate(ids, max_new_tokens=20), ids.shape[1]),
                                    skip_special_tokens=True)
    for pipe in (pipeline("text-generation", model=model, tokenizer=tokenizer), pipeline("text-generation", model=str(repo))):
        result = pipe(prompt, max_new_tokens=20, do_sample=False)
        assert result[0]["generated_text"] == prompt + continuation


# ------------------------------------------------------------------ tokenizer
def test_tokenizer_ids_equal_bolmos(loaded):
    _, tokenizer, core = loaded
    for text in TEXTS:
        ids = tokenizer(text)["input_ids"]
        assert ids == core.tokenizer.encode(text)
        assert tokenizer.decode(ids, skip_special_tokens=True) == text
    assert tokenizer.decode([1, 76, 105 + 260, 2]) == "<bos>He<eos>"  # fused ids decode as their byte
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (1, 1, 0)
    right = tokenizer(["a", "abc"], padding=True, padding_side="right")
    assert right["input_ids"] == [[1, 101, 0, 0], [1, 101, 102, 103]]
    assert tokenizer(["a", "abc"], padding=True)["attention_mask"] == [[0, 0, 1, 1], [1, 1, 1, 1]]


def test_chat_template(loaded):
    _, tokenizer, core = loaded
    messages = [{"role": "user", "content": "Hi!"}]
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    assert text == "<|user|>\nHi!\n<|assistant|>"
    ids = tokenizer.apply_chat_template(messages, tokenize=True)
    ids = ids["input_ids"] if isinstance(ids, Mapping) else ids
    assert ids == core.tokenizer.encode(text, add_bos=False)  # templates carry their own specials


# ------------------------------------------------------------------ saving
def test_save_pretrained_loads_with_bolmo_transformers_and_remote_code_layout(repo, loaded, tmp_path):
    model, tokenizer, core = loaded
    out = tmp_path / "saved"
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "bolmo" and config["auto_map"] == AUTO_MAP
    assert json.loads((out / "tokenizer_config.json").read_text())["auto_map"]["AutoTokenizer"][0] == (
        "tokenization_bolmo.BolmoTokenizer")
    for name in REMOTE_CODE:  # the released code the auto_map points at goes along
        assert (out / name).read_bytes() == (repo / name).read_bytes()
    ids = torch.tensor([core.tokenizer.encode("Round trip: Größe")])
    with torch.no_grad():
        expected = core(ids).logits
        assert torch.equal(bolmo.load(out)(ids).logits, expected)
        assert torch.equal(AutoModelForCausalLM.from_pretrained(out)(ids).logits, expected)
    assert AutoTokenizer.from_pretrained(out)("Größe")["input_ids"] == core.tokenizer.encode("Größe")


# ------------------------------------------------------------------ import order
def test_import_bolmo_stays_lazy_and_registers_when_transformers_comes(tiny_model_dir):
    """The post-import hook; the other order (transformers first) registers at `import bolmo`."""
    code = ("import sys; import bolmo; lazy = 'transformers' not in sys.modules\n"
            "from transformers import AutoConfig\n"
            f"print(lazy, type(AutoConfig.from_pretrained({str(tiny_model_dir)!r})).__module__)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "bolmo.hf.configuration"]
