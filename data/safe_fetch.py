"""Fetching image URLs without becoming an SSRF proxy. Shared by dataset reading and the gateway.

Each hop of a fetch is vetted before any connection is opened:

1. the scheme must be allowed (https only by default) and the URL carry no credentials;
2. the host is turned into addresses: an IP literal (including numeric forms such as
   `2130706433` or `0x7f000001`) is parsed here, a name goes through the resolver;
3. every address is checked against private, loopback, link-local, unique-local, CGNAT,
   multicast, reserved, unspecified and cloud-metadata ranges (an IPv4 address wrapped in
   IPv6, e.g. `::ffff:127.0.0.1`, is checked as the IPv4 address it carries);
4. the connection goes to the vetted address itself, with the original Host header and TLS
   server name, so a second DNS answer (rebinding) cannot swap the target.

Redirects are followed by hand, each hop vetted again. The body is streamed under a byte cap
and an overall deadline, and must be an image by its magic bytes, whatever Content-Type says.
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

from gemlora.data.images import ImageError, ImageLimits, LoadedImage, decode_image, sniff_format

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], Sequence[str]]

# Never fetched, whatever the policy allows: instance metadata services hand out credentials.
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a) for a in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200")
)
METADATA_HOSTNAMES = frozenset({"metadata", "metadata.google.internal", "instance-data"})

BLOCKED_NETWORKS: tuple[tuple[IPNetwork, str], ...] = tuple(
    (ipaddress.ip_network(net), label)
    for net, label in (
        ("0.0.0.0/8", "unspecified"),
        ("10.0.0.0/8", "private"),
        ("100.64.0.0/10", "carrier-grade NAT"),
        ("127.0.0.0/8", "loopback"),
        ("169.254.0.0/16", "link-local"),
        ("172.16.0.0/12", "private"),
        ("192.0.0.0/24", "reserved"),
        ("192.168.0.0/16", "private"),
        ("198.18.0.0/15", "reserved"),
        ("224.0.0.0/4", "multicast"),
        ("240.0.0.0/4", "reserved"),
        ("::/128", "unspecified"),
        ("::1/128", "loopback"),
        ("fc00::/7", "unique-local"),
        ("fe80::/10", "link-local"),
        ("fec0::/10", "site-local"),
        ("ff00::/8", "multicast"),
    )
)


class FetchPolicy(BaseModel):
    """What a fetch may reach and how much it may take."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    allowed_schemes: frozenset[str] = Field(
        default=frozenset({"https"}), description="URL schemes that may be fetched (https, http)."
    )
    allow_loopback: bool = Field(default=False, description="For tests and local development.")
    allowed_hosts: frozenset[str] | None = Field(
        default=None, description="When set, only these host names may be fetched."
    )
    allowed_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = Field(
        default=(), description="Private ranges to allow anyway (never the metadata addresses)."
    )
    max_redirects: int = Field(
        default=3, description="Redirects followed, each target checked again."
    )
    timeout_s: float = Field(default=10.0, description="Whole fetch, connect to last byte.")
    limits: ImageLimits = ImageLimits()


class ImageFetchError(ImageError):
    def __init__(self, url: str, reason: str):
        super().__init__(f"cannot fetch {url}: {reason}")
        self.url = url
        self.reason = reason


@dataclass(frozen=True)
class VettedTarget:
    """A URL whose host has been resolved and checked, and the address to connect to."""

    url: str
    scheme: str
    host: str
    port: int
    address: IPAddress

    def pinned_url(self):
        import httpx

        return httpx.URL(self.url).copy_with(host=str(self.address))

    def host_header(self) -> str:
        default_port = {"http": 80, "https": 443}[self.scheme]
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == default_port else f"{host}:{self.port}"


def system_resolver(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def parse_ip_host(host: str) -> IPAddress | None:
    """An IP literal in any form a resolver would accept: dotted, IPv6, or the numeric shorthands
    (`2130706433`, `0x7f000001`, `0177.0.0.1`, `127.1`). None for a host name."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    parts = host.split(".")
    if not 1 <= len(parts) <= 4 or not all(_is_number(p) for p in parts):
        return None
    numbers = [int(p, 0) if not _is_octal(p) else int(p, 8) for p in parts]
    *leading, last = numbers
    if any(n > 255 for n in leading) or last >= 256 ** (5 - len(parts)):
        raise ValueError(f"invalid numeric host {host!r}")
    value = 0
    for n in leading:
        value = value * 256 + n
    value = value * 256 ** (5 - len(parts)) + last
    return ipaddress.IPv4Address(value)


def _is_number(part: str) -> bool:
    lowered = part.lower()
    if lowered.startswith("0x"):
        return len(lowered) > 2 and all(c in "0123456789abcdef" for c in lowered[2:])
    return part.isdigit() and part.isascii()


def _is_octal(part: str) -> bool:
    return len(part) > 1 and part.startswith("0") and not part.lower().startswith("0x")


def embedded_ipv4(address: IPAddress) -> IPAddress:
    """The IPv4 address an IPv6 address carries (mapped, NAT64, 6to4, compatible), or itself."""
    if isinstance(address, ipaddress.IPv4Address):
        return address
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in ipaddress.ip_network("64:ff9b::/96"):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address in ipaddress.ip_network("::/96") and int(address) > 1:
        return ipaddress.IPv4Address(int(address))
    return address


class ImageFetcher:
    """Fetches image URLs under a `FetchPolicy`. `resolver` maps (host, port) to addresses;
    `verify` is passed to TLS (a CA bundle path or an `ssl.SSLContext` for tests)."""

    def __init__(
        self,
        policy: FetchPolicy | None = None,
        *,
        resolver: Resolver = system_resolver,
        verify: ssl.SSLContext | str | bool = True,
    ):
        self.policy = policy or FetchPolicy()
        self.resolver = resolver
        self.verify = verify

    def fetch_image(self, url: str) -> LoadedImage:
        data = self.fetch_bytes(url)
        try:
            return decode_image(data, self.policy.limits, origin=url)
        except ImageError as error:
            raise ImageFetchError(url, str(error)) from None

    def fetch_bytes(self, url: str) -> bytes:
        import httpx

        deadline = time.monotonic() + self.policy.timeout_s
        client = httpx.Client(
            trust_env=False,  # a proxy from the environment would bypass the pinned address
            verify=self.verify,
            timeout=self.policy.timeout_s,
            follow_redirects=False,
            # No connection reuse: a kept-alive TLS connection was verified for another name.
            limits=httpx.Limits(max_keepalive_connections=0),
        )
        try:
            with client:
                return self._follow(client, url, deadline)
        except httpx.TimeoutException:
            raise ImageFetchError(url, f"timed out after {self.policy.timeout_s:g} s") from None
        except httpx.HTTPError as error:
            raise ImageFetchError(url, f"request failed: {error}") from None

    def _follow(self, client, url: str, deadline: float) -> bytes:
        import httpx

        current = url
        for _ in range(self.policy.max_redirects + 1):
            target = self.vet(current)
            extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
            request = client.build_request(
                "GET",
                target.pinned_url(),
                headers={
                    "Host": target.host_header(),
                    "Accept": "image/*",
                    "Accept-Encoding": "identity",
                },
                extensions=extensions,
            )
            response = client.send(request, stream=True)
            try:
                if response.is_redirect:
                    # Resolve Location against the URL as asked for (by name), not against the
                    # pinned address the request went to.
                    current = str(httpx.URL(target.url).join(response.headers["location"]))
                    continue
                if response.status_code != 200:
                    raise ImageFetchError(url, f"HTTP {response.status_code} from {current}")
                return self._read_body(url, response, deadline)
            finally:
                response.close()
        raise ImageFetchError(url, f"more than {self.policy.max_redirects} redirects")

    def _read_body(self, url: str, response, deadline: float) -> bytes:
        max_bytes = self.policy.limits.max_bytes
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > max_bytes:
            raise ImageFetchError(url, f"{declared} bytes, over the limit of {max_bytes:,} bytes")
        body = bytearray()
        for chunk in response.iter_bytes():  # as it arrives: no buffering past the checks
            body += chunk
            if len(body) > max_bytes:
                raise ImageFetchError(url, f"more than the limit of {max_bytes:,} bytes")
            if time.monotonic() > deadline:
                raise ImageFetchError(url, f"timed out after {self.policy.timeout_s:g} s")
        if sniff_format(bytes(body[:16])) is None:
            content_type = response.headers.get("content-type", "none")
            raise ImageFetchError(url, f"response is not an image (Content-Type {content_type})")
        return bytes(body)

    def vet(self, url: str) -> VettedTarget:
        """Check a URL against the policy and pick the address to connect to. Opens nothing."""
        import httpx

        try:
            parsed = httpx.URL(url)
        except httpx.InvalidURL as error:
            raise ImageFetchError(url, f"invalid URL: {error}") from None
        scheme = parsed.scheme
        if scheme not in self.policy.allowed_schemes:
            allowed = ", ".join(sorted(self.policy.allowed_schemes))
            raise ImageFetchError(url, f"scheme {scheme!r} is not allowed (allowed: {allowed})")
        if parsed.userinfo:
            raise ImageFetchError(url, "credentials in image URLs are not allowed")
        host = parsed.host.rstrip(".").lower()
        if not host:
            raise ImageFetchError(url, "no host")
        self._check_host_name(url, host)
        port = parsed.port or {"http": 80, "https": 443}[scheme]
        addresses, literal = self._addresses(url, host, port)
        for address in addresses:
            reason = self.blocked_reason(address)
            if reason:
                raise ImageFetchError(
                    url, f"{_describe(host, address, literal)}, a {reason} address"
                )
        return VettedTarget(url, scheme, host, port, addresses[0])

    def _check_host_name(self, url: str, host: str) -> None:
        if host in METADATA_HOSTNAMES:
            raise ImageFetchError(url, f"{host} is a cloud metadata host")
        allowed = self.policy.allowed_hosts
        if allowed is not None and host not in allowed:
            raise ImageFetchError(url, f"host {host} is not in the allowed hosts")

    def _addresses(self, url: str, host: str, port: int) -> tuple[list[IPAddress], bool]:
        """The addresses to check, and whether the host was an IP literal (not resolved)."""
        try:
            literal = parse_ip_host(host)
        except ValueError as error:
            raise ImageFetchError(url, str(error)) from None
        if literal is not None:
            return [literal], True
        try:
            answers = [ipaddress.ip_address(a.split("%")[0]) for a in self.resolver(host, port)]
        except (OSError, ValueError) as error:
            raise ImageFetchError(url, f"cannot resolve {host}: {error}") from None
        if not answers:
            raise ImageFetchError(url, f"cannot resolve {host}: no addresses")
        return answers, False

    def blocked_reason(self, address: IPAddress) -> str | None:
        """Why an address may not be fetched from under this policy, or None if it may."""
        checked = embedded_ipv4(address)
        if checked in METADATA_ADDRESSES or address in METADATA_ADDRESSES:
            return "cloud metadata"
        if self.policy.allow_loopback and checked.is_loopback:
            return None
        if any(checked in net for net in self.policy.allowed_networks):
            return None
        for network, label in BLOCKED_NETWORKS:
            if checked in network:
                return label
        if not checked.is_global:
            return "non-public"
        return None


def _describe(host: str, address: IPAddress, literal: bool) -> str:
    """`10.0.0.1`, `2130706433 is 127.0.0.1` or `a.test resolves to ::ffff:7f00:1 (127.0.0.1)`."""
    shown = str(address)
    carried = embedded_ipv4(address)
    if carried != address:
        shown += f" ({carried})"
    if not literal:
        return f"{host} resolves to {shown}"
    return host if host == shown else f"{host} is {shown}"
