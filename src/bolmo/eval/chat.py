"""A model directory's chat template (the HF convention), rendered for one user message.

CUTE wraps its prompt in the model's chat template when the model has one and uses the plain
prompt otherwise. Templates are Jinja, as in transformers; they are rendered in Jinja's sandbox
because a template is code that came with a downloaded model.
"""

from __future__ import annotations

import json
from pathlib import Path

from bolmo.errors import ConfigError


def find_chat_template(model_dir: Path) -> str | None:
    """The template in `chat_template.jinja` or tokenizer_config.json's `chat_template` (the
    entry named "default" when it is a list), or None."""
    jinja_file = model_dir / "chat_template.jinja"
    if jinja_file.is_file():
        return jinja_file.read_text(encoding="utf-8")
    config_file = model_dir / "tokenizer_config.json"
    if not config_file.is_file():
        return None
    try:
        template = json.loads(config_file.read_text(encoding="utf-8")).get("chat_template")
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{config_file}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if isinstance(template, list):
        named = {entry.get("name"): entry.get("template") for entry in template if isinstance(entry, dict)}
        template = named.get("default")
    if template is not None and not isinstance(template, str):
        raise ConfigError(f"{config_file}: chat_template must be a string or a list of named templates")
    return template


def render_user_turn(template: str, content: str, bos_token: str = "", eos_token: str = "") -> str:
    """The text a chat model sees for one user message, with the assistant turn opened."""
    from jinja2 import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    try:
        return env.from_string(template).render(messages=[{"role": "user", "content": content}],
                                                add_generation_prompt=True, bos_token=bos_token,
                                                eos_token=eos_token)
    except TemplateError as exc:
        raise ConfigError(f"chat template cannot be rendered: {exc}") from None
