"""Where a webhook may be sent: http(s) URLs whose host resolves only to public addresses.

Exports: `UnsafeWebhookUrl`, `check_url`, `check_public`, `resolve`, `resolve_blocking`,
`refusal`, `forbidden_reason`.

A subscription must not aim the service at its own network (SSRF): loopback, private (RFC 1918,
unique-local), link-local (where cloud metadata services live, 169.254.169.254 and
fd00:ec2::254), carrier-grade NAT, multicast, reserved and unspecified addresses are refused,
for the URL as written and for every address its host name resolves to. The check runs when a
subscription is created or its URL changed, and again at every delivery, after resolution,
and the delivery then connects to the address that was checked (no second lookup a DNS
rebinding could answer differently). `CRM_LEDGER_WEBHOOK_ALLOW_PRIVATE_URLS=true` turns it off
(tests, closed networks).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from urllib.parse import urlsplit

from crm_ledger.errors import Unprocessable

__all__ = [
    "UnsafeWebhookUrl",
    "check_public",
    "check_url",
    "forbidden_reason",
    "refusal",
    "resolve",
    "resolve_blocking",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class UnsafeWebhookUrl(Unprocessable):
    """A webhook URL that is malformed or leads inside the service's network."""


def forbidden_reason(address: IPAddress) -> str | None:
    """Why a webhook may not connect to `address`, or None when it may."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    for name, flag in (
        ("loopback", address.is_loopback),
        ("link-local (cloud metadata lives there)", address.is_link_local),
        ("private", address.is_private),
        ("multicast", address.is_multicast),
        ("unspecified", address.is_unspecified),
        ("reserved", address.is_reserved),
    ):
        if flag:
            return f"{address} is a {name} address"
    if not address.is_global:
        return f"{address} is not a public address"
    return None


def check_url(url: str) -> tuple[str, str, int]:
    """The scheme, host and port of a well-formed http(s) URL; raises `UnsafeWebhookUrl`."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UnsafeWebhookUrl(
            "the webhook URL must be an absolute http:// or https:// URL with a host",
            errors=[_error("url must be http(s)://host/...")],
        )
    if parts.username is not None or parts.password is not None:
        raise UnsafeWebhookUrl(
            "the webhook URL must not carry a user name or password: deliveries are signed, "
            "put nothing secret in the URL",
            errors=[_error("no user:password@ in the URL")],
        )
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise UnsafeWebhookUrl(
            "the webhook URL has an invalid port", errors=[_error("invalid port")]
        ) from None
    return parts.scheme, parts.hostname, port


async def resolve(host: str, port: int) -> list[IPAddress]:
    """Every address `host` resolves to (a literal address resolves to itself)."""
    return await asyncio.to_thread(resolve_blocking, host, port)


def resolve_blocking(host: str, port: int) -> list[IPAddress]:
    """`resolve`, blocking the calling thread."""
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    found: list[IPAddress] = []
    for *_, sockaddr in infos:
        address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        if address not in found:
            found.append(address)
    return found


def refusal(host: str, addresses: list[IPAddress]) -> str | None:
    """Why `host` with these resolved `addresses` may not receive webhooks, or None."""
    if not addresses:
        return f"{host} resolves to no address"
    for address in addresses:
        reason = forbidden_reason(address)
        if reason is not None:
            return (
                f"{host} resolves to {reason}: webhooks go to public addresses only "
                "(CRM_LEDGER_WEBHOOK_ALLOW_PRIVATE_URLS=true allows others)"
            )
    return None


def check_public(url: str, *, allow_private: bool) -> None:
    """Refuse (`UnsafeWebhookUrl`) a URL that is malformed or whose host is not public.

    Resolves the host name (blocking: call it from a worker thread).
    """
    _, host, port = check_url(url)
    if allow_private:
        return
    try:
        addresses = resolve_blocking(host, port)
    except OSError as exc:
        raise UnsafeWebhookUrl(
            f"the webhook URL's host {host!r} does not resolve ({exc.strerror or exc}); "
            "check the name, or create the subscription once its DNS is in place",
            errors=[_error("host does not resolve")],
        ) from None
    reason = refusal(host, addresses)
    if reason is not None:
        raise UnsafeWebhookUrl(
            f"the webhook URL is refused: {reason}", errors=[_error("not a public address")]
        )


def _error(message: str) -> dict[str, str]:
    return {"location": "body", "field": "url", "message": message}
