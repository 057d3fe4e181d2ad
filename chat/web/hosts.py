"""
Which host names the web site answers (its defence against DNS rebinding).

A page on an attacker's site can make its own host name resolve, a moment
later, to the address of the chat's web port (DNS rebinding): the browser
then sends the attacker's page's requests to the chat, as same-origin
requests that may read the answers, with C{Host: attacker.example}. So the
site answers only requests whose C{Host} is one it serves:

    - any IP address (a page whose origin is an address cannot rebind it);
    - C{localhost} and this machine's host name (no one else's DNS answers
      for them);
    - the hosts of the C{--web-origin} origins;
    - the names given with C{--web-host} (the public name, behind a proxy).

Other requests get C{421 Misdirected Request}; a request without a usable
C{Host} header gets C{400}. The port is not compared: a name is the
attacker's or not whatever port follows it.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable

import attrs

from chat.web.origins import Origin

#: A host name (IDNs in their xn-- form): letters, digits, '-', '_', '.'.
_NAME = re.compile(r"[a-z0-9_](?:[a-z0-9_.-]{0,251}[a-z0-9_])?")

#: A Host header: a name or IPv4 address, or a bracketed IPv6 address,
#: then maybe a port.
_HOST_HEADER = re.compile(
    r"(?P<host>[A-Za-z0-9_.-]+|\[[0-9A-Fa-f:.]+\])(?::(?P<port>[0-9]{1,5}))?"
)

#: Names that always mean this machine.
LOCAL_NAMES = frozenset({"localhost"})


def host_name(text: str) -> str:
    """
    C{text} as a name to compare: lowercased, without a final dot.

    @raise ValueError: if it is not a host name or address.
    """
    name = text.strip().lower().rstrip(".")
    if name.startswith("[") and name.endswith("]"):
        name = name[1:-1]
    if _is_address(name) or _NAME.fullmatch(name):
        return name
    raise ValueError(f"not a host name: {text!r}")


def _is_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def header_host(header: str | None) -> str | None:
    """
    The host of a C{Host} header (lowercased, without port, final dot or
    IPv6 brackets), or None if it is missing or malformed.
    """
    if header is None:
        return None
    match = _HOST_HEADER.fullmatch(header.strip())
    if match is None:
        return None
    try:
        return host_name(match.group("host"))
    except ValueError:
        return None


@attrs.frozen
class HostPolicy:
    """
    The host names the site answers besides IP addresses.
    """

    names: frozenset[str] = LOCAL_NAMES

    @classmethod
    def build(
        cls,
        origins: Iterable[Origin] = (),
        hosts: Iterable[str] = (),
        machine: str | None = None,
    ) -> HostPolicy:
        """
        The policy for a site whose pages may also be opened from
        C{origins} (C{--web-origin}), that is also reached as C{hosts}
        (C{--web-host}), on a machine named C{machine}.

        @raise ValueError: for a host that is not a host name.
        """
        names = set(LOCAL_NAMES)
        names.update(host for _, host, _ in origins)
        names.update(host_name(host) for host in hosts)
        if machine:
            try:
                names.add(host_name(machine))
            except ValueError:
                pass  # a host name we could not match anyway
        return cls(frozenset(names))

    def allows(self, host: str) -> bool:
        """
        Whether the site answers for C{host} (as L{header_host} gives it).
        """
        return host in self.names or _is_address(host)
