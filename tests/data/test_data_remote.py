"""The SSRF-safe image fetcher, against loopback servers only.

A refusal must happen before any connection: each refusal test asserts that no socket
connected anywhere (the `connections` fixture records every connect) and that the server saw
no request.
"""

from __future__ import annotations

import ipaddress
import time

import pytest
from data_helpers import Route, png, write_jsonl

from gemlora.data import FetchPolicy, ImageFetcher, ImageFetchError, ReadOptions, read_dataset
from gemlora.data.images import ImageLimits

LOCAL = FetchPolicy(allowed_schemes=frozenset({"http", "https"}), allow_loopback=True)
RED = png("red")


def resolver_for(table: dict[str, list[str]]):
    """A resolver that answers from `table` and records each question."""
    calls: list[str] = []

    def resolve(host: str, port: int) -> list[str]:
        calls.append(host)
        if host not in table:
            raise OSError(f"unknown host {host}")
        return table[host]

    resolve.calls = calls
    return resolve


def no_resolver(host: str, port: int) -> list[str]:
    raise AssertionError(f"resolver called for {host}")


# --- allowed fetches -------------------------------------------------------------------------


def test_fetches_an_image_from_a_named_host_pinned_to_its_vetted_address(server, connections):
    server.routes["/red.png"] = Route(body=RED, headers={"Content-Type": "image/png"})
    fetcher = ImageFetcher(LOCAL, resolver=resolver_for({"images.test": ["127.0.0.1"]}))

    image = fetcher.fetch_image(server.url("/red.png", host="images.test"))

    assert (image.format, image.width, image.height) == ("PNG", 16, 16)
    assert server.requests == [("/red.png", f"images.test:{server.port}")]
    assert connections == ["127.0.0.1"]


def test_a_second_dns_answer_cannot_swap_the_target(server):
    """DNS rebinding: the host is resolved once per hop and the vetted address is used."""
    server.routes["/red.png"] = Route(body=RED)
    answers = iter([["127.0.0.1"], ["10.0.0.1"]])
    calls = []

    def rebinding(host, port):
        calls.append(host)
        return next(answers)

    assert (
        ImageFetcher(LOCAL, resolver=rebinding).fetch_bytes(
            server.url("/red.png", host="images.test")
        )
        == RED
    )
    assert calls == ["images.test"]


def test_https_is_pinned_with_the_original_server_name(tls_server, tls_files, connections):
    tls_server.routes["/red.png"] = Route(body=RED)
    policy = FetchPolicy(allow_loopback=True)  # https only, the default
    resolve = resolver_for({"images.test": ["127.0.0.1"], "other.test": ["127.0.0.1"]})
    fetcher = ImageFetcher(policy, resolver=resolve, verify=tls_files.client_context())

    assert fetcher.fetch_bytes(tls_server.url("/red.png", host="images.test")) == RED
    assert tls_server.requests == [("/red.png", f"images.test:{tls_server.port}")]

    # The certificate is checked against the name asked for, not the address connected to.
    with pytest.raises(ImageFetchError, match="request failed"):
        fetcher.fetch_bytes(tls_server.url("/red.png", host="other.test"))
    assert connections == ["127.0.0.1", "127.0.0.1"]


def test_redirects_are_followed_and_each_hop_checked(server):
    server.routes["/a"] = Route(302, headers={"Location": "/b"})
    server.routes["/b"] = Route(301, headers={"Location": server.url("/red.png", "images.test")})
    server.routes["/red.png"] = Route(body=RED)
    resolve = resolver_for({"images.test": ["127.0.0.1"]})

    assert ImageFetcher(LOCAL, resolver=resolve).fetch_bytes(server.url("/a", "images.test")) == RED
    assert [path for path, _ in server.requests] == ["/a", "/b", "/red.png"]
    assert resolve.calls == ["images.test"] * 3


def test_reading_a_dataset_with_remote_images(server, tmp_path):
    server.routes["/red.png"] = Route(body=RED)
    (tmp_path / "red.png").write_bytes(RED)

    def record(url):
        parts = [
            {"type": "image_url", "image_url": {"url": url}},
            {"type": "text", "text": "Colour?"},
        ]
        return {
            "messages": [
                {"role": "user", "content": parts},
                {"role": "assistant", "content": "red"},
            ]
        }

    path = write_jsonl(tmp_path / "d.jsonl", [record(server.url("/red.png")), record("red.png")])
    options = ReadOptions(fetcher=ImageFetcher(LOCAL, resolver=no_resolver))
    remote, local = read_dataset(path, options=options).examples
    assert remote == local
    assert remote.images[0].origin == server.url("/red.png")


# --- refused before connecting ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("10.1.2.3", "private"),
        ("172.16.5.4", "private"),
        ("192.168.1.1", "private"),
        ("127.0.0.1", "loopback"),
        ("127.8.9.10", "loopback"),
        ("169.254.10.10", "link-local"),
        ("169.254.169.254", "cloud metadata"),
        ("100.64.0.1", "carrier-grade NAT"),
        ("0.0.0.0", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("240.0.0.1", "reserved"),
        ("255.255.255.255", "reserved"),
        ("192.0.2.1", "non-public"),
        ("::1", "loopback"),
        ("::", "unspecified"),
        ("fe80::1", "link-local"),
        ("fc00::1", "unique-local"),
        ("fd12:3456::1", "unique-local"),
        ("fd00:ec2::254", "cloud metadata"),
        ("ff02::1", "multicast"),
        ("::ffff:127.0.0.1", "loopback"),
        ("::ffff:10.0.0.1", "private"),
        ("::ffff:169.254.169.254", "cloud metadata"),
        ("64:ff9b::a00:1", "private"),
        ("2002:7f00:1::", "loopback"),
        ("2001:db8::1", "non-public"),
    ],
)
def test_blocked_addresses(address, reason):
    assert ImageFetcher().blocked_reason(ipaddress.ip_address(address)) == reason


@pytest.mark.parametrize("address", ["93.184.215.14", "2606:2800:21f:cb07:6820:80da:af6b:8b2c"])
def test_public_addresses_pass_the_check(address):
    assert ImageFetcher().blocked_reason(ipaddress.ip_address(address)) is None


@pytest.mark.parametrize(
    ("host", "message"),
    [
        ("127.0.0.1", "127.0.0.1, a loopback address"),
        ("2130706433", "2130706433 is 127.0.0.1, a loopback address"),
        ("0x7f000001", "0x7f000001 is 127.0.0.1, a loopback address"),
        ("127.1", "127.1 is 127.0.0.1, a loopback address"),
        ("0177.0.0.1", "invalid URL"),
        ("[::ffff:127.0.0.1]", "::ffff:127.0.0.1 is ::ffff:7f00:1 (127.0.0.1), a loopback address"),
        ("[::1]", "::1, a loopback address"),
        ("169.254.169.254", "169.254.169.254, a cloud metadata address"),
        ("metadata.google.internal", "metadata.google.internal is a cloud metadata host"),
    ],
)
def test_ip_literals_in_every_form_are_checked_without_resolving(
    server, connections, host, message
):
    fetcher = ImageFetcher(FetchPolicy(allowed_schemes=frozenset({"http"})), resolver=no_resolver)
    with pytest.raises(ImageFetchError, match="cannot fetch") as raised:
        fetcher.fetch_bytes(f"http://{host}:{server.port}/red.png")
    assert message in raised.value.reason
    assert connections == [] and server.requests == []


def test_octal_dotted_hosts_are_parsed_too():
    from gemlora.data.safe_fetch import parse_ip_host

    assert str(parse_ip_host("0177.0.0.1")) == "127.0.0.1"
    assert str(parse_ip_host("0300.0250.0.1")) == "192.168.0.1"
    assert str(parse_ip_host("10.0x10.1")) == "10.16.0.1"
    assert parse_ip_host("images.test") is None
    with pytest.raises(ValueError, match="invalid numeric host"):
        parse_ip_host("256.0.0.1")


def test_a_name_resolving_to_a_private_address_is_never_connected_to(server, connections):
    server.routes["/red.png"] = Route(body=RED)
    resolve = resolver_for({"internal.test": ["127.0.0.1"]})
    fetcher = ImageFetcher(FetchPolicy(allowed_schemes=frozenset({"http"})), resolver=resolve)

    with pytest.raises(
        ImageFetchError, match=r"internal\.test resolves to 127\.0\.0\.1, a loopback"
    ):
        fetcher.fetch_bytes(server.url("/red.png", host="internal.test"))
    assert connections == [] and server.requests == []


def test_any_blocked_answer_among_several_refuses(server, connections):
    resolve = resolver_for({"mixed.test": ["127.0.0.1", "10.0.0.7"]})
    with pytest.raises(ImageFetchError, match=r"mixed\.test resolves to 10\.0\.0\.7, a private"):
        ImageFetcher(LOCAL, resolver=resolve).fetch_bytes(server.url("/x", host="mixed.test"))
    assert connections == []


def test_metadata_stays_blocked_whatever_the_policy_allows():
    policy = FetchPolicy(
        allow_loopback=True, allowed_networks=(ipaddress.ip_network("169.254.0.0/16"),)
    )
    fetcher = ImageFetcher(policy)
    assert fetcher.blocked_reason(ipaddress.ip_address("169.254.169.254")) == "cloud metadata"
    assert fetcher.blocked_reason(ipaddress.ip_address("169.254.1.1")) is None


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://images.test/a.png", "scheme 'http' is not allowed (allowed: https)"),
        ("ftp://images.test/a.png", "scheme 'ftp' is not allowed"),
        ("https://user:secret@images.test/a.png", "credentials in image URLs are not allowed"),
        ("https://elsewhere.test/a.png", "host elsewhere.test is not in the allowed hosts"),
    ],
)
def test_policy_refusals(url, reason, connections):
    policy = FetchPolicy(allowed_hosts=frozenset({"images.test"}))
    with pytest.raises(ImageFetchError) as raised:
        ImageFetcher(policy, resolver=no_resolver).fetch_bytes(url)
    assert reason in raised.value.reason
    assert connections == []


@pytest.mark.parametrize(
    ("location", "reason"),
    [
        ("http://10.0.0.1/x.png", "10.0.0.1, a private address"),
        ("http://169.254.169.254/latest/meta-data/", "a cloud metadata address"),
        ("http://internal.test/x.png", "internal.test resolves to 192.168.0.10, a private address"),
        ("ftp://images.test/x.png", "scheme 'ftp' is not allowed"),
    ],
)
def test_redirects_into_blocked_targets_are_refused(server, connections, location, reason):
    server.routes["/a"] = Route(302, headers={"Location": location})
    resolve = resolver_for({"internal.test": ["192.168.0.10"]})
    with pytest.raises(ImageFetchError) as raised:
        ImageFetcher(LOCAL, resolver=resolve).fetch_bytes(server.url("/a"))
    assert reason in raised.value.reason
    assert connections == ["127.0.0.1"]  # the first hop only
    assert [path for path, _ in server.requests] == ["/a"]


def test_redirect_loops_stop(server):
    server.routes["/loop"] = Route(302, headers={"Location": "/loop"})
    with pytest.raises(ImageFetchError, match="more than 3 redirects"):
        ImageFetcher(LOCAL).fetch_bytes(server.url("/loop"))
    assert len(server.requests) == 4


# --- what comes back -------------------------------------------------------------------------


@pytest.mark.parametrize("content_length", [True, False])
def test_size_cap(server, content_length):
    server.routes["/big.png"] = Route(body=RED + b"\0" * 5000, content_length=content_length)
    policy = LOCAL.model_copy(update={"limits": ImageLimits(max_bytes=2000)})
    with pytest.raises(ImageFetchError, match=r"(over|more than) the limit of 2,000 bytes"):
        ImageFetcher(policy).fetch_bytes(server.url("/big.png"))


def test_slow_response_times_out(server):
    server.routes["/slow.png"] = Route(body=RED, delay_s=2)
    policy = LOCAL.model_copy(update={"timeout_s": 0.3})
    with pytest.raises(ImageFetchError, match=r"timed out after 0\.3 s"):
        ImageFetcher(policy).fetch_bytes(server.url("/slow.png"))


def test_a_trickling_body_hits_the_overall_deadline(server):
    # Each 1 KB chunk arrives well within the read timeout; the whole body does not.
    server.routes["/drip.png"] = Route(body=png("red", (200, 200)) + b"\0" * 8000, drip_s=0.15)
    policy = LOCAL.model_copy(update={"timeout_s": 0.5})
    started = time.monotonic()
    with pytest.raises(ImageFetchError, match=r"timed out after 0\.5 s"):
        ImageFetcher(policy).fetch_bytes(server.url("/drip.png"))
    assert time.monotonic() - started < 1.0  # the whole body would take about 1.4 s


def test_content_is_sniffed_not_trusted(server):
    server.routes["/fake.png"] = Route(
        body=b"<html>hi</html>", headers={"Content-Type": "image/png"}
    )
    with pytest.raises(
        ImageFetchError, match=r"response is not an image \(Content-Type image/png\)"
    ):
        ImageFetcher(LOCAL).fetch_bytes(server.url("/fake.png"))


def test_http_errors_are_reported(server):
    with pytest.raises(ImageFetchError, match="HTTP 404"):
        ImageFetcher(LOCAL).fetch_bytes(server.url("/missing.png"))


def test_decoded_image_limits_apply_to_fetched_images(server):
    server.routes["/big.png"] = Route(body=png("red", (100, 100)))
    policy = LOCAL.model_copy(update={"limits": ImageLimits(max_pixels=1000)})
    with pytest.raises(ImageFetchError, match="over the limit of 1,000 pixels"):
        ImageFetcher(policy).fetch_image(server.url("/big.png"))
