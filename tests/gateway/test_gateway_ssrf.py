"""Image URLs that point inside the network are refused before any connection is opened.

The gateway runs in this process, so the `connections` guard sees every socket it connects:
each refusal test asserts that the only connection made was the test's own to the gateway,
and that the loopback image server saw no request. The strict gateway uses the default policy
(loopback not allowed), with http let through so numeric http hosts reach the address checks.
"""

from __future__ import annotations

import pytest

MODEL = "tiny-gemma-3-mm"


def image_request(url: str) -> dict:
    content = [
        {"type": "text", "text": "describe"},
        {"type": "image_url", "image_url": {"url": url}},
    ]
    system = {"role": "system", "content": "be brief"}
    return {"model": MODEL, "messages": [system, {"role": "user", "content": content}]}


SSRF_CASES = [
    ("private-ipv4", "http://10.0.0.1/a.png", "private"),
    ("cloud-metadata", "http://169.254.169.254/latest/meta-data/", "cloud metadata"),
    ("ipv4-mapped-ipv6-loopback", "http://[::ffff:127.0.0.1]:{port}/red.png", "loopback"),
    ("decimal-loopback", "http://2130706433:{port}/red.png", "loopback"),
    # httpx already refuses the octal form as an invalid URL; a refusal all the same.
    ("octal-loopback", "http://0177.0.0.1:{port}/red.png", "invalid URL"),
    ("octal-private", "http://012.0.0.1/a.png", "invalid URL"),
    ("hex-loopback", "http://0x7f000001:{port}/red.png", "loopback"),
    ("decimal-private", "http://167772161/a.png", "private"),
    ("name-resolving-to-private", "http://private.test/a.png", "private"),
    ("name-resolving-to-mapped-loopback", "http://mapped.test:{port}/red.png", "loopback"),
    ("name-resolving-to-metadata", "http://metadata.test/", "cloud metadata"),
    ("metadata-host-name", "http://metadata.google.internal/computeMetadata/v1/", "metadata"),
    ("loopback-name", "http://images.test:{port}/red.png", "loopback"),
]


@pytest.mark.parametrize(
    ("url", "reason"), [c[1:] for c in SSRF_CASES], ids=[c[0] for c in SSRF_CASES]
)
def test_internal_image_url_is_refused_without_connecting(
    strict_gateway, image_server, keys, connections, url, reason
):
    url = url.format(port=image_server.port)
    served_before = len(image_server.requests)

    response = strict_gateway.post(image_request(url), keys.admin)

    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == "messages[1].content[1].image_url"
    assert error["message"].startswith("messages[1].content[1].image_url: cannot fetch")
    assert reason in error["message"]
    gateway_port = int(strict_gateway.url.rsplit(":", 1)[1])
    assert {port for _host, port in connections} == {gateway_port}
    assert len(image_server.requests) == served_before


def test_the_default_policy_fetches_public_https_only():
    from gemlora.serve.gateway import GatewayConfig

    policy = GatewayConfig().images.fetch
    assert policy.allowed_schemes == {"https"}
    assert not policy.allow_loopback and policy.allowed_networks == ()
