"""A model's chat template (the Hugging Face convention): `chat_template.jinja`, or the
`chat_template` of tokenizer_config.json (the entry named "default" when it is a list), in the
model directory or in its subword tokenizer directory. Rendered the way Hugging Face tokenizers
render it (messages, add_generation_prompt, bos/eos tokens, raise_exception), in jinja2's sandbox:
a template is code that came with a downloaded model. `bolmo serve` answers chat completions with
it; `bolmo eval cute` wraps its prompts in it."""

from __future__ import annotations

import json
from pathlib import Path

from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from bolmo.errors import ConfigError
from bolmo.tokenizer import SUBWORD_TOKENIZER_DIR


class ChatTemplate:
    def __init__(self, source: str, bos_token: str = "", eos_token: str = "") -> None:
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = _raise
        try:
            self.template = env.from_string(source)
        except TemplateError as exc:
            raise ConfigError(f"the chat template does not parse: {exc}") from None
        self.source, self.bos_token, self.eos_token = source, bos_token, eos_token

    def render(self, messages: list[dict[str, str]]) -> str:
        """The prompt for `messages`, ending where the assistant's reply begins."""
        try:
            return self.template.render(messages=messages, add_generation_prompt=True,
                                        bos_token=self.bos_token, eos_token=self.eos_token)
        except TemplateError as exc:
            raise ConfigError(f"the chat template rejected the messages: {exc}") from None

    def user_turn(self, content: str) -> str:
        """The prompt for one user message."""
        return self.render([{"role": "user", "content": content}])


def _raise(message: str) -> None:
    raise TemplateError(message)


def find_chat_template(model_dir: Path | None) -> ChatTemplate | None:
    """The first template found, or None."""
    if model_dir is None:
        return None
    for directory in (model_dir, model_dir / SUBWORD_TOKENIZER_DIR):
        jinja = directory / "chat_template.jinja"
        config_file = directory / "tokenizer_config.json"
        config = {}
        if config_file.is_file():
            try:
                config = json.loads(config_file.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise ConfigError(f"{config_file}: not valid JSON ({exc})") from None
        source = jinja.read_text(encoding="utf-8") if jinja.is_file() else config.get("chat_template")
        if isinstance(source, list):  # named templates: use the default one
            source = next((t.get("template") for t in source if isinstance(t, dict) and t.get("name") == "default"),
                          None)
        if source is not None and not isinstance(source, str):
            raise ConfigError(f"{config_file}: chat_template must be a string or a list of named templates")
        if isinstance(source, str):
            return ChatTemplate(source, _token_text(config.get("bos_token")), _token_text(config.get("eos_token")))
    return None


def _token_text(token) -> str:
    if isinstance(token, dict):  # an AddedToken written out
        return str(token.get("content", ""))
    return token if isinstance(token, str) else ""
