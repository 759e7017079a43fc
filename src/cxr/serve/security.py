"""Who may talk to the server: a Host allow-list, a same-origin rule for posts, an optional token.

A server on 127.0.0.1 is still reachable from any web page the user opens: the page can post a
form to it (cross-site request), or rebind its own DNS name to 127.0.0.1 and read the answers
(DNS rebinding). So:

- the Host header must name the server (default: the bound address and localhost), which a
  rebound name does not;
- a POST that a browser marks as coming from another site (Origin, Sec-Fetch-Site) is refused;
- with `--token-file`, every API route but /api/health needs `Authorization: Bearer TOKEN`;
  a browser gets it once from `/?token=TOKEN`, which sets a same-site, HTTP-only cookie.

A WSGI middleware, so it runs before Flask reads the request body.
"""

from __future__ import annotations

import hmac
import ipaddress
import socket
from collections.abc import Callable, Iterable
from http.cookies import SimpleCookie
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from cxr.errors import ConfigError
from cxr.serve.transport import json_error

LOCAL_NAMES = ("localhost", "127.0.0.1", "::1")
ANY_HOST = "*"
TOKEN_COOKIE = "cxr_token"
_SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def is_wildcard(host: str) -> bool:
    return host.strip("[]") in ("0.0.0.0", "::", "")


def default_allowed_hosts(bind_host: str) -> tuple[str, ...]:
    """The bound address and localhost; on a wildcard bind, this machine's names and addresses."""
    hosts = {*LOCAL_NAMES, bind_host.strip("[]").lower()}
    if is_wildcard(bind_host):
        hosts.discard(bind_host.strip("[]"))
        name = socket.gethostname()
        hosts |= {name.lower(), socket.getfqdn().lower()}
        try:
            hosts |= {info[4][0] for info in socket.getaddrinfo(name, None)}
        except OSError:
            pass
        hosts |= _outward_addresses()
    return tuple(sorted(hosts))


def _outward_addresses() -> set[str]:
    """The address this machine uses to reach other hosts (a UDP 'connect' sends nothing)."""
    found = set()
    for family, target in ((socket.AF_INET, "192.0.2.1"), (socket.AF_INET6, "2001:db8::1")):
        try:
            with socket.socket(family, socket.SOCK_DGRAM) as probe:
                probe.connect((target, 9))
                found.add(probe.getsockname()[0])
        except OSError:
            pass
    return found


def read_token(path: str | None) -> str | None:
    """The bearer token in `path` (its first line), or None when no file is given."""
    if not path:
        return None
    try:
        token = Path(path).read_text().strip().splitlines()[0].strip()
    except (OSError, IndexError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--token-file {path}: cannot read a token from it ({exc})") from None
    if len(token) < 16:
        raise ConfigError(f"--token-file {path}: the token is {len(token)} characters; use 16+")
    return token


def _host_name(host_header: str) -> str:
    """'Example.org:8000' -> 'example.org'; '[::1]:8000' -> '::1'."""
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


class AccessGuard:
    """WSGI middleware: Host allow-list, same-origin posts, optional bearer token."""

    def __init__(self, app: Callable, allowed_hosts: Iterable[str], token: str | None = None):
        self.app = app
        self.allowed = {h.strip("[]").lower() for h in allowed_hosts}
        self.token = token

    def __call__(self, environ: dict, start_response: Callable):
        refusal = self.refusal(environ)
        if refusal is None and self.token:
            setter = self._token_from_query(environ)
            if setter is not None:
                start_response(*setter)
                return [b""]
        if refusal is None:
            return self.app(environ, start_response)
        status, code, message = refusal
        reason = {400: "Bad Request", 401: "Unauthorized", 403: "Forbidden"}[status]
        line, headers, body = json_error(status, reason, code, message)
        if status == 401:
            headers.append(("WWW-Authenticate", 'Bearer realm="cxr"'))
        start_response(line, [*headers, ("Content-Length", str(len(body)))])
        return [body]

    def refusal(self, environ: dict) -> tuple[int, str, str] | None:
        """(status, code, message) when the request must be refused, else None."""
        host = _host_name(environ.get("HTTP_HOST") or environ.get("SERVER_NAME", ""))
        if ANY_HOST not in self.allowed and host not in self.allowed:
            return (
                400,
                "host_not_allowed",
                f"Host '{host}' is not one this server answers to (cxr serve --allowed-host "
                "adds one); this protects a local server from DNS rebinding",
            )
        method = environ.get("REQUEST_METHOD", "GET")
        if method not in _SAFE_METHODS and self._cross_site(environ):
            return (
                403,
                "cross_site",
                "a page on another site may not post to this server; use the page this "
                "server serves, or a client that sends no Origin header (curl, scripts)",
            )
        path = environ.get("PATH_INFO", "")
        if self.token and path.startswith("/api/") and path != "/api/health":
            if not self._has_token(environ):
                return (
                    401,
                    "unauthorized",
                    "this server needs a token: send 'Authorization: Bearer TOKEN' (the "
                    "token is in the server's --token-file), or open /?token=TOKEN once",
                )
        return None

    def _cross_site(self, environ: dict) -> bool:
        if environ.get("HTTP_SEC_FETCH_SITE", "") == "cross-site":
            return True
        origin = environ.get("HTTP_ORIGIN")
        if origin is None:
            return False  # not a browser, or an old one: the Host check still applies
        if origin == "null":
            return True  # sandboxed frames, file:// pages
        own = (environ.get("HTTP_HOST") or "").lower()
        return urlsplit(origin).netloc.lower() != own

    def _has_token(self, environ: dict) -> bool:
        given = ""
        auth = environ.get("HTTP_AUTHORIZATION", "")
        if auth.lower().startswith("bearer "):
            given = auth[7:].strip()
        elif environ.get("HTTP_COOKIE"):
            morsel = SimpleCookie(environ["HTTP_COOKIE"]).get(TOKEN_COOKIE)
            given = morsel.value if morsel else ""
        return bool(given) and hmac.compare_digest(given.encode(), self.token.encode())

    def _token_from_query(self, environ: dict):
        """GET /?token=T with the right token: set the cookie and drop the token from the URL."""
        if environ.get("REQUEST_METHOD") != "GET" or environ.get("PATH_INFO") != "/":
            return None
        given = parse_qs(environ.get("QUERY_STRING", "")).get("token", [""])[0]
        if not given or not hmac.compare_digest(given.encode(), self.token.encode()):
            return None
        cookie = f"{TOKEN_COOKIE}={self.token}; Path=/; HttpOnly; SameSite=Strict"
        return "303 See Other", [
            ("Location", "/"),
            ("Set-Cookie", cookie),
            ("Content-Length", "0"),
            ("Cache-Control", "no-store"),
        ]
