"""
sendgroup to lists of users, and named groups (creategroup, joingroup,
leavegroup, kickgroup, groups, sendgroup #group) on the line protocol.
"""

from __future__ import annotations

from typing import Any

import pytest

from chat.limits import Quotas
from chat.store.memory import MemoryStore
from tests.helpers import Connection, Server, demo_users, result_of


def _logged_in(server: Server) -> tuple[Connection, dict[str, str]]:
    client = server.connect()
    return client, {
        name: client.login(name) for name in ("messi", "henderson", "lineker")
    }


def _inbox(client: Connection, token: str) -> dict[str, list[dict[str, Any]]]:
    reply = client.request(f"inbox {token}")
    assert reply["status"] == "OK", reply
    messages: dict[str, list[dict[str, Any]]] = reply["messages"]
    return messages


def test_sendgroup_to_a_list() -> None:
    """One message to a list reaches each user once, with one acknowledgement."""
    server = Server()
    client, tokens = _logged_in(server)
    reply = client.request(
        f"sendgroup {tokens['messi']} henderson,lineker  halo  semua "
    )
    assert reply == {"status": "OK", "message": "Message Sent"}
    for name, full_name in [
        ("henderson", "Jordan Henderson"),
        ("lineker", "Gary Lineker"),
    ]:
        (message,) = _inbox(client, tokens[name])["messi"]
        assert message["msg"] == "halo  semua"
        assert (message["to"], message["msg_to"]) == (name, full_name)
        assert "group" not in message
    assert _inbox(client, tokens["messi"]) == {}


def test_sendgroup_duplicates_and_sender() -> None:
    """Duplicates are sent once; the sender may be in the list."""
    server = Server()
    client, tokens = _logged_in(server)
    line = f"sendgroup {tokens['messi']} henderson,messi,,henderson, note"
    assert client.request(line)["status"] == "OK"
    assert len(_inbox(client, tokens["henderson"])["messi"]) == 1
    assert [m["msg"] for m in _inbox(client, tokens["messi"])["messi"]] == ["note"]
    assert _inbox(client, tokens["lineker"]) == {}


def test_sendgroup_unknown_users_stores_nothing() -> None:
    """Every unknown recipient is named, and no one gets the message."""
    server = Server()
    client, tokens = _logged_in(server)
    reply = client.request(
        f"sendgroup {tokens['messi']} henderson,ronaldo,lineker,pele hi"
    )
    assert reply == {
        "status": "ERROR",
        "message": "User Tidak Ditemukan: ronaldo, pele",
        "code": "no_such_user",
        "users": ["ronaldo", "pele"],
    }
    assert server.store.messages == []


def test_sendgroup_too_many_recipients() -> None:
    """More distinct recipients than --max-recipients is refused."""
    server = Server(max_recipients=2)
    client, tokens = _logged_in(server)
    reply = client.request(f"sendgroup {tokens['messi']} henderson,lineker,messi hi")
    assert reply == {
        "status": "ERROR",
        "message": "too many recipients",
        "code": "too_many_recipients",
        "max_recipients": 2,
    }
    assert server.store.messages == []
    line = f"sendgroup {tokens['messi']} henderson,lineker,henderson hi"
    assert client.request(line)["status"] == "OK"


def test_sendgroup_errors() -> None:
    """Bad tokens, missing arguments and a failing store are errors."""
    server = Server()
    client, tokens = _logged_in(server)
    assert client.request("sendgroup nope henderson hi")["code"] == "no_session"
    for line in [
        "sendgroup",
        "sendgroup t",
        "sendgroup t henderson",
        "sendgroup t ,, hi",
    ]:
        assert client.request(line)["code"] == "missing_argument", line
    server.store.broken = True
    reply = client.request(f"sendgroup {tokens['messi']} henderson hi")
    assert reply["code"] == "storage_unavailable"


def test_creategroup() -> None:
    """creategroup makes the caller owner and only member."""
    server = Server()
    server.clock.advance(1764037200)
    client, tokens = _logged_in(server)
    reply = client.request(f"creategroup {tokens['messi']} team")
    assert reply == {
        "status": "OK",
        "message": "Group Created",
        "group": {
            "name": "team",
            "owner": "messi",
            "members": ["messi"],
            "created_at": "2025-11-25T02:20:00.000Z",
        },
    }
    assert client.request(f"creategroup {tokens['henderson']} #team") == {
        "status": "ERROR",
        "message": "group already exists",
        "code": "group_exists",
    }
    assert (
        client.request(f"creategroup {tokens['henderson']} #other")["group"]["name"]
        == "other"
    )


@pytest.mark.parametrize("name", ["Team", "tim!", "t" * 33, "#", "a,b"])
def test_creategroup_invalid_name(name: str) -> None:
    """Group names follow the username rule."""
    server = Server()
    client, tokens = _logged_in(server)
    reply = client.request(f"creategroup {tokens['messi']} {name}")
    assert reply["code"] == "invalid_group_name"
    assert reply["message"].startswith("invalid group name: group names are 1-32")
    assert server.store.groups == {}


def test_join_and_list_groups() -> None:
    """joingroup adds the caller; groups lists the caller's groups by name."""
    server = Server()
    client, tokens = _logged_in(server)
    client.request(f"creategroup {tokens['messi']} team")
    client.request(f"creategroup {tokens['lineker']} alpha")
    reply = client.request(f"joingroup {tokens['henderson']} team")
    assert reply["message"] == "Group Joined"
    assert reply["group"]["members"] == ["messi", "henderson"]
    client.request(f"joingroup {tokens['henderson']} #alpha")
    groups = client.request(f"groups {tokens['henderson']}")
    assert groups["status"] == "OK"
    assert [(g["name"], g["owner"], g["members"]) for g in groups["groups"]] == [
        ("alpha", "lineker", ["lineker", "henderson"]),
        ("team", "messi", ["messi", "henderson"]),
    ]
    assert client.request(f"joingroup {tokens['henderson']} team") == {
        "status": "ERROR",
        "message": "already a member of the group",
        "code": "already_member",
    }
    assert client.request(f"joingroup {tokens['henderson']} nope") == {
        "status": "ERROR",
        "message": "no such group",
        "code": "no_such_group",
    }
    assert client.request(f"groups {tokens['messi']}")["groups"][0]["name"] == "team"
    fresh = server.connect()
    fresh.request("register budi rahasia123 Budi")
    token = fresh.login("budi", "rahasia123")
    assert fresh.request(f"groups {token}") == {"status": "OK", "groups": []}


def test_leavegroup_passes_ownership_then_deletes() -> None:
    """The longest-standing member inherits a group; the last one out deletes it."""
    server = Server()
    client, tokens = _logged_in(server)
    client.request(f"creategroup {tokens['messi']} team")
    client.request(f"joingroup {tokens['lineker']} team")
    client.request(f"joingroup {tokens['henderson']} team")
    reply = client.request(f"leavegroup {tokens['messi']} team")
    assert reply["message"] == "Group Left"
    assert reply["group"]["owner"] == "lineker"
    assert reply["group"]["members"] == ["lineker", "henderson"]
    assert client.request(f"leavegroup {tokens['messi']} team") == {
        "status": "ERROR",
        "message": "not a member of the group",
        "code": "not_a_member",
        "group": "team",
        "username": "messi",
    }
    client.request(f"leavegroup {tokens['lineker']} team")
    assert client.request(f"leavegroup {tokens['henderson']} #team") == {
        "status": "OK",
        "message": "Group Left",
        "group": None,
    }
    assert server.store.groups == {}
    assert (
        client.request(f"joingroup {tokens['messi']} team")["code"] == "no_such_group"
    )
    assert (
        client.request(f"leavegroup {tokens['messi']} team")["code"] == "no_such_group"
    )


def test_kickgroup() -> None:
    """Only the owner kicks, never themselves; the kicked can no longer send."""
    server = Server()
    client, tokens = _logged_in(server)
    client.request(f"creategroup {tokens['messi']} team")
    client.request(f"joingroup {tokens['henderson']} team")
    assert client.request(f"kickgroup {tokens['henderson']} team messi") == {
        "status": "ERROR",
        "message": "only the group owner can do this",
        "code": "not_owner",
    }
    assert client.request(f"kickgroup {tokens['messi']} team messi") == {
        "status": "ERROR",
        "message": "the owner cannot kick themselves",
        "code": "cannot_kick_self",
    }
    reply = client.request(f"kickgroup {tokens['messi']} team lineker")
    assert (reply["code"], reply["username"]) == ("not_a_member", "lineker")
    assert (
        client.request(f"kickgroup {tokens['messi']} nope lineker")["code"]
        == "no_such_group"
    )
    reply = client.request(f"kickgroup {tokens['messi']} #team henderson")
    assert reply["message"] == "Member Removed"
    assert reply["group"]["members"] == ["messi"]
    assert client.request(f"groups {tokens['henderson']}")["groups"] == []
    reply = client.request(f"sendgroup {tokens['henderson']} #team let me in")
    assert reply["code"] == "not_a_member"


def test_group_commands_need_a_session_and_arguments() -> None:
    """Group commands refuse bad tokens, no session (creategroup without a
    token, before auth) and missing arguments."""
    client = Server().connect()
    for line in [
        "creategroup x team",
        "creategroup team",
        "joingroup x team",
        "leavegroup x team",
        "kickgroup x team a",
        "groups x",
    ]:
        assert client.request(line)["code"] == "no_session", line
    for line in [
        "creategroup",
        "joingroup x",
        "leavegroup x",
        "kickgroup x team",
        "groups",
    ]:
        assert client.request(line)["code"] == "missing_argument", line


def test_sendgroup_to_a_group() -> None:
    """A group message reaches every member but the sender, marked with the
    group; later members do not get older messages."""
    server = Server()
    client, tokens = _logged_in(server)
    client.request(f"creategroup {tokens['messi']} team")
    client.request(f"joingroup {tokens['henderson']} team")
    assert client.request(f"sendgroup {tokens['messi']} #team  first  one") == {
        "status": "OK",
        "message": "Message Sent",
    }
    client.request(f"joingroup {tokens['lineker']} team")
    client.request(f"sendgroup {tokens['henderson']} #team second")
    henderson = _inbox(client, tokens["henderson"])
    assert [(m["msg"], m["group"], m["to"]) for m in henderson["messi"]] == [
        ("first  one", "team", "henderson")
    ]
    assert [m["msg"] for m in _inbox(client, tokens["lineker"])["henderson"]] == [
        "second"
    ]
    messi = _inbox(client, tokens["messi"])
    assert list(messi) == ["henderson"]
    assert messi["henderson"][0]["msg_to"] == "Lionel Messi"


def test_sendgroup_to_a_group_errors() -> None:
    """Only members send to a group, and only to one that exists."""
    server = Server()
    client, tokens = _logged_in(server)
    client.request(f"creategroup {tokens['messi']} team")
    reply = client.request(f"sendgroup {tokens['lineker']} #team hi")
    assert reply == {
        "status": "ERROR",
        "message": "not a member of the group",
        "code": "not_a_member",
        "group": "team",
        "username": "lineker",
    }
    assert (
        client.request(f"sendgroup {tokens['lineker']} #nope hi")["code"]
        == "no_such_group"
    )
    assert (
        client.request(f"sendgroup {tokens['messi']} # hi")["code"] == "no_such_group"
    )
    assert server.store.messages == []


def test_sendgroup_to_a_group_alone() -> None:
    """A member alone in a group may send; only its history holds the message."""
    server = Server()
    client, tokens = _logged_in(server)
    client.request(f"creategroup {tokens['messi']} solo")
    assert client.request(f"sendgroup {tokens['messi']} #solo note")["status"] == "OK"
    assert _inbox(client, tokens["messi"]) == {}
    history = client.request(f"history {tokens['messi']} #solo")
    assert [m["msg"] for m in history["messages"]] == ["note"]


@pytest.mark.parametrize("name", ["admin", "postmaster", "-rf", "..", ".x"])
def test_creategroup_refuses_names_that_impersonate(name: str) -> None:
    """Group names follow the new-username rule: no reserved or path-like names."""
    server = Server()
    client, tokens = _logged_in(server)
    reply = client.request(f"creategroup {tokens['messi']} {name}")
    assert reply["code"] == "invalid_group_name"
    assert server.store.groups == {}


def test_too_many_groups() -> None:
    """Creating or joining a group past the per-user cap is refused with
    too_many_groups and the cap; leaving one makes room."""
    store = MemoryStore(quotas=Quotas(max_groups=1))
    for user in demo_users():
        result_of(store.add_user(user))
    server = Server(store=store)
    client, tokens = _logged_in(server)
    assert client.request(f"creategroup {tokens['messi']} one")["status"] == "OK"
    refused = {
        "status": "ERROR",
        "message": "too many groups",
        "code": "too_many_groups",
        "max_groups": 1,
    }
    assert client.request(f"creategroup {tokens['messi']} two") == refused
    assert client.request(f"creategroup {tokens['henderson']} two")["status"] == "OK"
    assert client.request(f"joingroup {tokens['messi']} two") == refused
    assert client.request(f"leavegroup {tokens['messi']} one")["status"] == "OK"
    assert client.request(f"joingroup {tokens['messi']} two")["status"] == "OK"
