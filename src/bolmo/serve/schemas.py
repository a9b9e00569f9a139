"""Request bodies of the OpenAI-compatible routes, validated by pydantic: a wrong type or an
out-of-range value becomes a 400 (strict types: "3" is not a number) with an OpenAI-style error object (see `app`). Fields other
clients send that bolmo does not use (frequency_penalty, user, ...) are accepted and ignored."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Stop = str | list[str] | None


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    include_usage: bool = False


class SamplingFields(BaseModel):
    """What completions and chat completions share. `max_tokens` counts bytes."""

    model_config = ConfigDict(extra="ignore", strict=True)

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
    max_tokens: int | None = Field(16, ge=0, description="new bytes per choice (tokens are bytes)")
    echo: bool = False
    logprobs: int | None = Field(None, ge=0, le=5, description="top log-probabilities per byte")
    return_patches: bool = Field(False, description="bolmo extension: stream bytes and patch boundaries")


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    role: Literal["system", "user", "assistant"]
    content: str


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(..., min_length=1)
