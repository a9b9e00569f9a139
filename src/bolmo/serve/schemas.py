"""Request bodies of the OpenAI-compatible routes, validated by pydantic: a wrong type or an
out-of-range value becomes a 400 (strict types: "3" is not a number) with an OpenAI-style error
object (see `app`). Fields other clients send that bolmo does not use (frequency_penalty, user,
...) are accepted and ignored, and an optional field sent as null means "not given" (OpenAI
allows it; LangChain and others send it)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Stop = str | list[str] | None


class RequestModel(BaseModel):
    """Every request object: strict types, unknown fields ignored, null optional fields dropped."""

    # allow_inf_nan: Python's JSON reader takes NaN / Infinity, which then failed range checks with
    # a misleading "should be less than or equal to 2"
    model_config = ConfigDict(extra="ignore", strict=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def null_is_not_given(cls, data: Any) -> Any:
        """An explicit null takes the field's default; a required field sent as null stays an error."""
        if not isinstance(data, dict):
            return data
        optional = {name for name, info in cls.model_fields.items() if not info.is_required()}
        return {key: value for key, value in data.items() if value is not None or key not in optional}


class StreamOptions(RequestModel):
    include_usage: bool = False


class SamplingFields(RequestModel):
    """What completions and chat completions share. `max_tokens` counts bytes."""

    model: str | None = None
    max_tokens: int | None = Field(None, ge=0, description="new bytes per choice (tokens are bytes)")
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int | None = Field(None, ge=1, description="bolmo extension: sample among the k likeliest ids")
    seed: int | None = Field(None, ge=0, lt=2**62)
    stop: Stop = Field(None, description="up to 4 non-empty strings")
    n: int = Field(1, ge=1)
    stream: bool = False
    stream_options: StreamOptions | None = None


class CompletionRequest(SamplingFields):
    prompt: str | list[str] = Field(..., description="a string or a list of strings")
    max_tokens: int = Field(16, ge=0, description="new bytes per choice (tokens are bytes)")
    echo: bool = False
    logprobs: int | None = Field(None, ge=0, le=5, description="top log-probabilities per byte")
    return_patches: bool = Field(False, description="bolmo extension: stream bytes and patch boundaries")


class TextPart(RequestModel):
    type: Literal["text"]
    text: str


class ChatMessage(RequestModel):
    role: Literal["system", "user", "assistant"]
    content: str | list[TextPart] = Field(..., description="a string, or OpenAI's list of text parts")

    def text(self) -> str:
        """The message's text: its text parts joined by newlines (as vLLM joins them)."""
        return self.content if isinstance(self.content, str) else "\n".join(p.text for p in self.content)


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(..., min_length=1)
    logprobs: bool = Field(False, description="not supported on chat: a 400 when true")
    top_logprobs: int | None = Field(None, ge=0, le=20, description="not supported on chat: a 400 when given")
