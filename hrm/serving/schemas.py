"""The OpenAI-compatible request bodies (pydantic: strict types, unknown fields refused), the fields refused by
name, and the error a refused request gets (``RequestError``, rendered by ``error_body``)."""

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

MAX_LOGPROBS = 20  # the most alternatives per token that ``logprobs`` may ask for
# OpenAI request fields hrm.serve refuses by name with a 400 (README.md lists them); chat's logprobs are among
# them, completions' ``logprobs`` is supported
UNSUPPORTED = (
    "suffix",
    "best_of",
    "logprobs",
    "top_logprobs",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "functions",
    "function_call",
    "response_format",
    "audio",
    "modalities",
    "prediction",
    "reasoning_effort",
    "service_tier",
    "store",
    "metadata",
    "web_search_options",
)


class Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)


class StreamOptions(Strict):
    include_usage: bool = False


class SamplingFields(Strict):
    model: str | None = None
    max_tokens: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    logit_bias: dict[str, float] | None = None
    stop: str | list[str] | None = None
    n: int = Field(1, ge=1, le=16)
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None


class Completion(SamplingFields):
    prompt: str | list[str] | list[int] | list[list[int]]
    logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    echo: bool = False


class TextPart(Strict):
    type: Literal["text"]
    text: str


class Message(Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]
    name: str | None = None


class Chat(SamplingFields):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = None


class Generate(Strict):
    prompt: str
    max_tokens: int = 100
    temperature: float = 0.8


class Tokenize(Strict):
    prompt: str
    model: str | None = None
    add_special_tokens: bool = False


class Detokenize(Strict):
    tokens: list[int]
    model: str | None = None


class RequestError(ValueError):
    """A request the server refuses (400 unless ``status``); the message names the field."""

    def __init__(self, message: str, param: str | None = None, status: int = 400, code: str | None = None):
        super().__init__(message)
        self.param, self.status, self.code = param, status, code


def error_body(message: str, kind: str = "invalid_request_error", param=None, code=None) -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}
