"""The inline `<img src="..." />` form and image counting, without an engine."""

from __future__ import annotations

import asyncio
import base64

import pytest
from gateway_helpers import png

from gemlora.serve.errors import GatewayError
from gemlora.serve.gateway import ImagePolicy
from gemlora.serve.gateway.images import ImageConverter, split_inline_images
from gemlora.serve.gateway.schema import Message

RED = "data:image/png;base64," + base64.b64encode(png("red")).decode()


def test_inline_images_split_text_into_parts_in_order():
    parts = split_inline_images(f"Compare <img src=\"{RED}\" /> with <IMG src='{RED}'> please.")
    assert [(p.type, p.text) for p in parts] == [
        ("text", "Compare "),
        ("image_url", None),
        ("text", " with "),
        ("image_url", None),
        ("text", " please."),
    ]
    assert parts[1].image_url.url == RED


@pytest.mark.parametrize("text", ["no images here", "a literal <img> tag", "<img alt='x'>"])
def test_text_without_an_img_src_stays_a_string(text):
    assert split_inline_images(text) is None


def test_converter_rewrites_inline_images_and_counts_every_image():
    messages = [
        Message(role="system", content="<img src='not converted in system text' />"),
        Message(role="user", content=f'Look: <img src="{RED}" />'),
        Message(role="user", content=[{"type": "image_url", "image_url": {"url": RED}}]),
    ]
    converter = ImageConverter(ImagePolicy())
    assert asyncio.run(converter.convert(messages)) == 2
    assert isinstance(messages[0].content, str)
    assert [p.type for p in messages[1].content] == ["text", "image_url"]


def test_the_image_limit_counts_inline_images_too():
    messages = [Message(role="user", content=f'<img src="{RED}"/>' * 3)]
    with pytest.raises(GatewayError) as raised:
        asyncio.run(ImageConverter(ImagePolicy(max_per_request=2)).convert(messages))
    assert raised.value.param == "messages" and "3 images" in raised.value.message
