"""The model's chat template: `chat_template` in tokenizer_config.json (or chat_template.jinja)
of the model directory or of its subword tokenizer directory, rendered by jinja2's sandbox the
way Hugging Face tokenizers render it (messages, add_generation_prompt, bos/eos tokens)."""

from __future__ import annotations

import json
from pathlib import Path

from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from bolmo.errors import ServeError


class ChatTemplate:
    def __init__(self, source: str, bos_token: str = "", eos_token: str = "") -> None:
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = _raise
        try:
            self.template = env.from_string(source)
        except TemplateError as exc:
            raise ServeError(f"the chat template does not parse: {exc}") from None
        self.bos_token, self.eos_token = bos_token, eos_token

    def render(self, messages: list[dict[str, str]]) -> str:
        """The prompt for `messages`, ending where the assistant's reply begins."""
        try:
            return self.template.render(messages=messages, add_generation_prompt=True,
                                        bos_token=self.bos_token, eos_token=self.eos_token)
        except TemplateError as exc:
            raise ServeError(f"the chat template rejected the messages: {exc}") from None


def _raise(message: str) -> None:
    raise TemplateError(message)


def find_chat_template(model_dir: Path | None) -> ChatTemplate | None:
    """The first template found, or None (then chat completions answer 400)."""
    if model_dir is None:
        return None
    for directory in (model_dir, model_dir / "subword_tokenizer"):
        jinja = directory / "chat_template.jinja"
        config_file = directory / "tokenizer_config.json"
        config = {}
        if config_file.is_file():
            try:
                config = json.loads(config_file.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise ServeError(f"{config_file}: not valid JSON ({exc})") from None
        source = jinja.read_text(encoding="utf-8") if jinja.is_file() else config.get("chat_template")
        if isinstance(source, list):  # named templates: use the default one
            source = next((t.get("template") for t in source if t.get("name") == "default"), None)
        if isinstance(source, str):
            return ChatTemplate(source, _token_text(config.get("bos_token")), _token_text(config.get("eos_token")))
    return None


def _token_text(token) -> str:
    if isinstance(token, dict):  # an AddedToken written out
        return str(token.get("content", ""))
    return token if isinstance(token, str) else ""
