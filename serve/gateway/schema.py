"""The request schema of POST /v1/chat/completions: the hosted reference's contract.

Validation is strict (no "0.5" for a number, no "yes" for a boolean) and unknown fields are
refused with a 400 naming them: the gateway owns the contract, and vLLM's extension fields
(`chat_template`, `allowed_token_ids`, ...) change what the engine does, so they do not pass
through unvetted. Messages are system / user / assistant; content is a string or a list of
`text` and `image_url` parts (images in user messages only).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

MAX_CHOICES = 16


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class ImageURL(_Strict):
    url: str = Field(min_length=1)
    detail: Literal["auto", "low", "high"] | None = None


class ContentPart(_Strict):
    """`{"type": "text", "text": ...}` or `{"type": "image_url", "image_url": {"url": ...}}`."""

    type: Literal["text", "image_url"]
    text: str | None = None
    image_url: ImageURL | None = None

    @model_validator(mode="after")
    def _one_payload(self) -> ContentPart:
        if self.type == "text" and (self.text is None or self.image_url is not None):
            raise ValueError("a text part has 'text' and nothing else")
        if self.type == "image_url" and (self.image_url is None or self.text is not None):
            raise ValueError("an image_url part has 'image_url' and nothing else")
        return self

    @classmethod
    def of_text(cls, text: str) -> ContentPart:
        return cls(type="text", text=text)

    @classmethod
    def of_image(cls, url: str) -> ContentPart:
        return cls(type="image_url", image_url=ImageURL(url=url))


class Message(_Strict):
    role: Literal["system", "user", "assistant"]
    content: str | Annotated[list[ContentPart], Field(min_length=1)]
    name: str | None = None

    @model_validator(mode="after")
    def _images_from_users_only(self) -> Message:
        images = isinstance(self.content, list) and any(
            part.type == "image_url" for part in self.content
        )
        if images and self.role != "user":
            raise ValueError(f"image_url parts are only allowed in user messages, not {self.role}")
        return self


class StreamOptions(_Strict):
    include_usage: bool = False


class ResponseFormat(_Strict):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: dict[str, Any] | None = None


class ChatCompletionRequest(_Strict):
    model: str = Field(min_length=1, max_length=256)
    messages: list[Message] = Field(min_length=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    n: int | None = Field(default=None, ge=1, le=MAX_CHOICES)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = Field(default=None, max_length=16)
    seed: int | None = None
    user: str | None = Field(default=None, max_length=256)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    logit_bias: (
        dict[Annotated[str, Field(pattern=r"^\d+$")], Annotated[float, Field(ge=-100, le=100)]]
        | None
    ) = Field(default=None, description="Token id -> bias, -100..100 (OpenAI's range).")
    response_format: ResponseFormat | None = None

    @property
    def wants_usage_chunk(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)
