"""One SSRF-safe HTTP session: resolve once, check the address, pin the connection to it.

Shared by the photo fetcher (jobs/fetch.py) and webhook delivery (jobs/webhooks.py): both
connect to hosts a vendor names, so both refuse internal addresses the same way.
requests-hardened's ``HTTPSession`` and its IP-pinning adapter do the pinning: the host is
resolved once, the addresses are checked, and the connection goes to the checked IP while the
Host header, TLS SNI and certificate check keep the URL's host name, so a DNS answer that
changes between check and connect (rebinding) cannot redirect us. requests-hardened's own filter
knows only "private or not" plus an ``allow_loopback`` switch, so ``PinningAdapter`` keeps its
pinning scheme and swaps in our policy (``address_refusal``) with FETCH_ALLOW_NETWORKS.
"""
from __future__ import annotations

import functools
import ipaddress
import logging
import socket
from collections.abc import Sequence
from http.cookiejar import DefaultCookiePolicy
from typing import Any, cast

import requests
from requests.adapters import HTTPAdapter
from requests.structures import CaseInsensitiveDict
from requests_hardened import Config, HTTPSession
from requests_hardened.ip_filter import InvalidIPAddress
from requests_hardened.ip_filter_adapter import IPFilterAdapter

logger = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


# --- address policy -----------------------------------------------------------------------
def _nets(*pairs: tuple[str, str]) -> tuple[tuple[IPNetwork, str], ...]:
    return tuple((ipaddress.ip_network(cidr), reason) for cidr, reason in pairs)


# First match wins, so specific entries come before the ranges that contain them.
_REFUSED_V4 = _nets(
    ("169.254.169.254/32", "the cloud metadata endpoint"),
    ("0.0.0.0/8", "unspecified ('this network')"),
    ("10.0.0.0/8", "private (RFC 1918)"),
    ("100.64.0.0/10", "carrier-grade NAT (RFC 6598)"),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local"),
    ("172.16.0.0/12", "private (RFC 1918)"),
    ("192.0.0.0/24", "IETF protocol assignments"),
    ("192.0.2.0/24", "documentation (TEST-NET-1)"),
    ("192.88.99.0/24", "6to4 relay anycast"),
    ("192.168.0.0/16", "private (RFC 1918)"),
    ("198.18.0.0/15", "benchmarking"),
    ("198.51.100.0/24", "documentation (TEST-NET-2)"),
    ("203.0.113.0/24", "documentation (TEST-NET-3)"),
    ("224.0.0.0/4", "multicast"),
    ("240.0.0.0/4", "reserved (incl. broadcast)"),
)
_REFUSED_V6 = _nets(
    ("::/128", "unspecified"),
    ("::1/128", "loopback"),
    ("::/96", "IPv4-compatible (deprecated)"),
    ("64:ff9b:1::/48", "local-use NAT64 (RFC 8215)"),
    ("::/8", "reserved"),
    ("100::/64", "discard-only"),
    ("2001:db8::/32", "documentation"),
    ("2001::/23", "IETF protocol assignments (incl. Teredo)"),
    ("2002::/16", "6to4"),
    ("3fff::/20", "documentation"),
    ("5f00::/16", "segment routing (SRv6)"),
    ("fc00::/7", "unique local (ULA, private)"),
    ("fe80::/10", "link-local"),
    ("fec0::/10", "site-local (deprecated)"),
    ("ff00::/8", "multicast"),
)
# The well-known NAT64 prefix: the translator connects to the IPv4 address in the low 32 bits.
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


def address_refusal(ip: IPAddress, allow_networks: Sequence[IPNetwork] = ()) -> str | None:
    """Why connecting to ``ip`` is refused, or None when it may be fetched from."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # ::ffff:a.b.c.d is the IPv4 host itself
    if any(ip in net for net in allow_networks):
        return None
    return _policy_refusal(ip)


def _policy_refusal(ip: IPAddress) -> str | None:
    if isinstance(ip, ipaddress.IPv6Address) and ip in _NAT64:
        inner = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        reason = _policy_refusal(inner)
        return None if reason is None else f"NAT64 of {inner}, which is {reason}"
    for net, reason in _REFUSED_V4 if ip.version == 4 else _REFUSED_V6:
        if ip in net:
            return f"{reason} ({net})"
    # Backstop for whatever else the ipaddress module knows to be special.
    if not ip.is_global or ip.is_multicast or ip.is_reserved:
        return "not a globally routable address"
    return None


@functools.lru_cache(maxsize=32)
def parse_allow_networks(cidrs: tuple[str, ...]) -> tuple[IPNetwork, ...]:
    """FETCH_ALLOW_NETWORKS as network objects; a bad entry is a configuration error."""
    try:
        return tuple(ipaddress.ip_network(cidr.strip(), strict=False) for cidr in cidrs)
    except ValueError as exc:
        raise ValueError(f"FETCH_ALLOW_NETWORKS has an invalid CIDR: {exc}") from None


class ForbiddenAddress(InvalidIPAddress):
    """The host resolves to an address the policy refuses; raised before any connection."""

    def __init__(self, host: str, ip: IPAddress, reason: str) -> None:
        super().__init__(
            f"refusing to connect to {host}: it resolves to {ip}, which is {reason}; "
            "add its network to FETCH_ALLOW_NETWORKS only if workers should reach it"
        )
        self.host, self.ip, self.reason = host, ip, reason


def _getaddrinfo(host: str, port: int | None) -> list[Any]:
    return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)


def resolve_host(host: str, port: int | None, allow_networks: Sequence[IPNetwork]) -> str:
    """Resolve ``host`` once, refuse unless every address passes, return the IP to connect to.

    getaddrinfo also decodes odd IPv4 spellings (2130706433, 0177.0.0.1, 0x7f.1), so the
    policy always sees the real address.
    """
    try:
        infos = _getaddrinfo(host, port)
    except socket.gaierror as exc:
        raise requests.ConnectionError(f"could not resolve {host}: {exc}") from exc
    addresses = [
        ipaddress.ip_address(sockaddr[0])
        for family, _type, _proto, _name, sockaddr in infos
        if family in (socket.AF_INET, socket.AF_INET6)
    ]
    if not addresses:
        raise requests.ConnectionError(f"{host} has no IPv4 or IPv6 address")
    # Any refused address refuses the host: a name mixing public and internal answers is hostile.
    for ip in addresses:
        reason = address_refusal(ip, allow_networks)
        if reason is not None:
            logger.warning("refused: %s resolves to %s (%s)", host, ip, reason)
            raise ForbiddenAddress(host, ip, reason)
    pinned = addresses[0]
    logger.debug("%s pinned to %s", host, pinned)
    return f"[{pinned}]" if pinned.version == 6 else str(pinned)


class PinningAdapter(IPFilterAdapter):
    """requests-hardened's pinning adapter with our address policy and allow-list.

    Its ``build_connection_pool_key_attributes`` calls a module-level ``filter_host`` whose only
    knob is ``allow_loopback``; this override does the same steps (Host header, TLS names from
    the URL, connect to the resolved IP) but resolves through ``resolve_host``.
    """

    def __init__(self, *, is_https_proto: bool, allow_networks: tuple[IPNetwork, ...]) -> None:
        super().__init__(is_https_proto=is_https_proto, allow_loopback=False)
        self._allow_networks = allow_networks

    def build_connection_pool_key_attributes(
        self, request: requests.PreparedRequest, verify: bool | str, cert: Any = None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        params, kwargs = HTTPAdapter.build_connection_pool_key_attributes(self, request, verify, cert)
        host_params, pool_kwargs = cast(dict[str, Any], params), cast(dict[str, Any], kwargs)
        hostname: str = host_params["host"]
        port: int | None = host_params["port"]
        # Copy before mutating: callers may share one headers mapping between requests.
        request.headers = CaseInsensitiveDict(request.headers or {})
        host_header = f"[{hostname}]" if ":" in hostname else hostname
        request.headers["Host"] = host_header if port is None else f"{host_header}:{port}"
        if self._is_https_proto:
            # Verify the certificate (and send SNI) for the name, not the pinned IP.
            pool_kwargs["assert_hostname"] = hostname
            pool_kwargs["server_hostname"] = hostname
        host_params["host"] = resolve_host(hostname, port, self._allow_networks)
        return host_params, pool_kwargs


def pinned_session(*, timeout: tuple[float, float], user_agent: str, allow_networks: Sequence[str],
                   headers: dict[str, str] | None = None) -> requests.Session:
    """A session that never follows redirects itself, keeps no cookies and pins every host."""
    session = HTTPSession(
        Config(
            ip_filter_enable=True,
            ip_filter_allow_loopback_ips=False,
            never_redirect=True,  # callers follow redirects themselves (or not at all), re-checking each hop
            default_timeout=timeout,
            user_agent_override=user_agent,
        )
    )
    # No proxies (a proxy would resolve the name itself, defeating the pin) and no ~/.netrc.
    session.trust_env = False
    session.cookies.set_policy(DefaultCookiePolicy(allowed_domains=[]))  # keep no cookies
    session.headers.update(headers or {})
    allow = parse_allow_networks(tuple(allow_networks))
    session.mount("http://", PinningAdapter(is_https_proto=False, allow_networks=allow))
    session.mount("https://", PinningAdapter(is_https_proto=True, allow_networks=allow))
    return session
