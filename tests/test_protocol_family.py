"""
The course family's clients (issue 17) on the line protocol: their
spellings of our commands, the reply keys and shapes they read, and the
commands they added, with an in-memory store and a fake clock.
"""

from __future__ import annotations

import base64
import hashlib
import json
from datetime import datetime
from typing import Any

import pytest

from chat import commands, compat, replies
from chat.model import Message, Page
from tests.helpers import Connection, Server
from tests.test_federation import Realms


def _logged_in(server: Server) -> tuple[Connection, dict[str, str]]:
    client = server.connect()
    return client, {n: client.login(n) for n in ("messi", "henderson", "lineker")}


def _inbox(client: Connection, token: str) -> dict[str, list[dict[str, Any]]]:
    reply = client.request(f"inbox {token}")
    assert reply["status"] == "OK", reply
    messages: dict[str, list[dict[str, Any]]] = reply["messages"]
    return messages


def _exact(client: Connection, data: bytes) -> dict[str, Any]:
    """
    The one reply to exactly C{data}, as a course-family client sends it.
    """
    client.send(data)
    (reply,) = client.replies()
    return reply


def _team(server: Server) -> tuple[Connection, dict[str, str]]:
    """
    messi, henderson and lineker logged in; messi owns bteam, henderson is
    in it.
    """
    client, tokens = _logged_in(server)
    client.request(f"creategroup {tokens['messi']} bteam henderson")
    return client, tokens


# Logging in.


def test_auth_reply_carries_token_id_and_realm_id() -> None:
    """auth answers the token as tokenid and token_id, and this realm's id."""
    realms = Realms()
    client = realms["realm-b"].connect()
    reply = _exact(client, b"auth messi surabaya \r\n")
    assert reply["token_id"] == reply["tokenid"]
    assert reply["realm_id"] == "realm-b"
    token = reply["token_id"]
    assert client.request(f"inbox {token}") == {"status": "OK", "messages": {}}


def test_register_reply_logs_in_like_auth() -> None:
    """register <user> <password> (no full name) answers a working token."""
    server = Server()
    client = server.connect()
    reply = _exact(client, b"register budi rahasia123 \r\n")
    assert reply["status"] == "OK"
    assert reply["token_id"] == reply["tokenid"]
    assert server.store.users["budi"].full_name == "budi"
    token = reply["tokenid"]
    sent = _exact(client, f"sendprivate {token} messi halo \r\n".encode())
    assert sent == {"status": "OK", "message": "Message Sent"}


# Aliases: the same command, the same rules and errors.


@pytest.mark.parametrize("alias", ["send", "sendprivate"])
def test_sendprivate_is_send(alias: str) -> None:
    """sendprivate sends a private message, with send's errors."""
    server = Server()
    client, tokens = _logged_in(server)
    line = f"{alias} {tokens['messi']} henderson  hello son \r\n"
    assert _exact(client, line.encode()) == {"status": "OK", "message": "Message Sent"}
    (message,) = _inbox(client, tokens["henderson"])["messi"]
    assert message["msg"] == "hello son"
    unknown = _exact(client, f"{alias} {tokens['messi']} nobody hi\r\n".encode())
    assert unknown["message"] == "User Tidak Ditemukan"
    missing = _exact(client, f"{alias} {tokens['messi']} henderson\r\n".encode())
    assert missing["message"] == "--Protocol Tidak Benar"
    bad = _exact(client, f"{alias} nosuchtoken henderson hi\r\n".encode())
    assert bad["message"] == "Session Tidak Ditemukan"


def test_sendprivatefile_is_sendfile() -> None:
    """sendprivatefile <token> <to> <path> b'...' sends the file by its name."""
    server = Server()
    client, tokens = _logged_in(server)
    content = base64.b64encode(b"halo")
    line = f"sendprivatefile {tokens['messi']} henderson /home/me/hi.txt {content} \r\n"
    reply = _exact(client, line.encode())
    assert reply["message"] == "File Sent"
    assert reply["file_name"] == reply["address"] == "hi.txt"
    (message,) = _inbox(client, tokens["henderson"])["messi"]
    assert base64.b64decode(message["file_content"]) == b"halo"


@pytest.mark.parametrize(
    ("alias", "canonical"),
    [("create_group", "creategroup"), ("addgroup", "creategroup")],
)
def test_create_group_aliases(alias: str, canonical: str) -> None:
    """addgroup and create_group create a group, with creategroup's rules."""
    server = Server()
    client, tokens = _logged_in(server)
    reply = _exact(client, f"{alias} {tokens['messi']} kopi \r\n".encode())
    assert reply["message"] == "Group Created"
    assert reply["group"]["members"] == ["messi"]
    again = _exact(client, f"{alias} {tokens['messi']} kopi \r\n".encode())
    assert again["code"] == "group_exists"
    bad = _exact(client, f"{alias} {tokens['messi']} Kopi! \r\n".encode())
    assert bad["code"] == "invalid_group_name"


@pytest.mark.parametrize(
    ("join", "leave"),
    [("join_group", "leave_group"), ("joingroup", "exitgroup")],
)
def test_join_and_leave_aliases(join: str, leave: str) -> None:
    """join_group, leave_group and exitgroup are joingroup and leavegroup."""
    server = Server()
    client, tokens = _logged_in(server)
    client.request(f"creategroup {tokens['messi']} kopi")
    joined = _exact(client, f"{join} {tokens['lineker']} kopi \r\n".encode())
    assert joined["group"]["members"] == ["messi", "lineker"]
    left = _exact(client, f"{leave} {tokens['lineker']} kopi \r\n".encode())
    assert left["message"] == "Group Left"
    assert left["group"]["members"] == ["messi"]
    again = _exact(client, f"{leave} {tokens['lineker']} kopi \r\n".encode())
    assert again["code"] == "not_a_member"


def test_send_group_and_send_file_group() -> None:
    """send_group and send_file_group are sendgroup and sendgroupfile."""
    server = Server()
    client, tokens = _team(server)
    sent = _exact(client, f"send_group {tokens['messi']} bteam halo tim \r\n".encode())
    assert sent == {"status": "OK", "message": "Message Sent"}
    content = base64.b64encode(b"x")
    line = f"send_file_group {tokens['messi']} henderson,lineker a/b.txt {content} \r\n"
    assert _exact(client, line.encode())["file_name"] == "b.txt"
    got = _inbox(client, tokens["henderson"])["messi"]
    assert [(m["msg"], m.get("group")) for m in got] == [
        ("halo tim", "bteam"),
        ("b.txt", None),
    ]
    assert [m["msg"] for m in _inbox(client, tokens["lineker"])["messi"]] == ["b.txt"]


def test_inboxrealm_is_getrealminbox() -> None:
    """inboxrealm <token> <realm> takes that realm's messages, as getrealminbox."""
    realms = Realms()
    client, token = realms.login("realm-a", "messi")
    client.request(f"send {token} henderson@realm-b dari a")
    realms.settle()
    henderson, other = realms.login("realm-b", "henderson")
    reply = _exact(henderson, f"inboxrealm {other} realm-a \r\n".encode())
    assert [m["msg"] for m in reply["messages"]["messi@realm-a"]] == ["dari a"]
    assert henderson.request(f"inboxrealm {other} realm-a")["messages"] == {}
    unknown = henderson.request(f"inboxrealm {other} realm-z")
    assert unknown["message"] == "Realm Tidak Ditemukan"


@pytest.mark.parametrize(
    ("line", "message", "recipients"),
    [
        # As the family's clients format them: the content as b'...'.
        (
            "sendfilerealm {t} realm-b henderson /home/me/hi.txt b'aGk='\r\n",
            "File Sent to Realm",
            ["henderson"],
        ),
        (
            "sendprivatefilerealm {t} realm-b henderson hi.txt b'aGk=' \r\n",
            "File Sent to Realm",
            ["henderson"],
        ),
        (
            "sendgroupfilerealm {t} realm-b henderson,lineker hi.txt b'aGk='\r\n",
            "File Sent to Group in Realm",
            ["henderson", "lineker"],
        ),
        (
            "sendfile {t} henderson@realm-b hi.txt aGk=\r\n",
            "File Sent to Realm",
            ["henderson"],
        ),
    ],
)
def test_files_to_other_realms(line: str, message: str, recipients: list[str]) -> None:
    """sendfilerealm and kin (and sendfile to user@realm) queue the file for
    the other realm, answered as the family's clients expect (the name is a
    path's last component); each recipient there finds it in their inbox as
    a file from messi@realm-a. Without a session or arguments, sendfile's
    errors."""
    realms = Realms()
    client, token = realms.login("realm-a", "messi")
    reply = _exact(client, line.format(t=token).encode())
    assert reply == {
        "status": "OK",
        "message": message,
        "file_name": "hi.txt",
        "file_size": 2,
        "file_sha256": hashlib.sha256(b"hi").hexdigest(),
        "address": "hi.txt",
    }
    anonymous = _exact(realms["realm-a"].connect(), line.format(t="x").encode())
    assert anonymous["code"] == "no_session"
    verb = line.split()[0]
    if verb != "sendfile":
        missing = client.request(f"{verb} {token} realm-b henderson hi.txt")
        assert missing["code"] == "missing_argument"
    realms.settle()
    for user in recipients:
        other, other_token = realms.login("realm-b", user)
        (got,) = other.request(f"inbox {other_token}")["messages"]["messi@realm-a"]
        assert (got["msg"], got["file_name"], got["file_content"]) == (
            "hi.txt",
            "hi.txt",
            "aGk=",
        )
    assert client.request(f"inbox {token}")["messages"] == {}


@pytest.mark.parametrize("logged_in", [False, True])
def test_what_makes_the_family_unsafe_is_not_copied(logged_in: bool) -> None:
    """Listing sessions (info, logininfo), presence for anyone
    (getpresence), realm messages without a link (recv...) stay unknown
    commands, logged in or not; addrealm needs an administrator."""
    client = Realms()["realm-a"].connect()
    token = client.login("messi") if logged_in else "x"
    for line in [
        "info",
        "logininfo",
        "getpresence",
        "getpresence messi",
        f"getpresence {token} messi",
        "recvrealm messi henderson realm-b hi",
        "recvfilerealm messi henderson realm-b hi.txt aGk=",
        "recvgroupfilerealm messi henderson realm-b hi.txt aGk=",
        "recvsendprivatefilerealm messi henderson realm-b hi.txt aGk=",
    ]:
        assert client.request(line)["code"] == "unknown_command", line
    added = client.request(f"addrealm {token} realm-b 127.0.0.1 9")
    assert added["code"] == ("not_admin" if logged_in else "no_session")


def test_alias_words_are_case_insensitive() -> None:
    """An alias word, like any command word, may be in any case."""
    server = Server()
    client, tokens = _logged_in(server)
    reply = _exact(client, f"SendPrivate {tokens['messi']} henderson hi\r\n".encode())
    assert reply["message"] == "Message Sent"


# Bare group names.


@pytest.mark.parametrize("verb", ["sendgroup", "send_group"])
def test_bare_group_name_means_the_group(verb: str) -> None:
    """sendgroup <token> bteam <text> sends to the group bteam."""
    server = Server()
    client, tokens = _team(server)
    line = f"{verb} {tokens['henderson']} bteam hi all \r\n"
    assert _exact(client, line.encode())["message"] == "Message Sent"
    (message,) = _inbox(client, tokens["messi"])["henderson"]
    assert message["group"] == "bteam"
    assert _inbox(client, tokens["lineker"]) == {}


def test_bare_group_name_for_files() -> None:
    """sendgroupfile <token> bteam <path> <content> sends to the group."""
    server = Server()
    client, tokens = _team(server)
    line = f"sendgroupfile {tokens['messi']} bteam C:\\docs\\a.png aGk=\r\n"
    reply = _exact(client, line.encode())
    assert reply["file_name"] == "a.png"
    (message,) = _inbox(client, tokens["henderson"])["messi"]
    assert (message["group"], message["file_name"]) == ("bteam", "a.png")


def test_a_user_of_that_name_wins() -> None:
    """If a user has the bare name, the message goes to the user, not the group."""
    server = Server()
    client, tokens = _logged_in(server)
    client.request(f"creategroup {tokens['henderson']} lineker")
    client.request(f"sendgroup {tokens['henderson']} lineker hi")
    (message,) = _inbox(client, tokens["lineker"])["henderson"]
    assert "group" not in message


def test_bare_name_neither_user_nor_group() -> None:
    """A bare name that is neither is the unknown-users error, for both commands."""
    server = Server()
    client, tokens = _logged_in(server)
    expected = {
        "status": "ERROR",
        "message": "User Tidak Ditemukan: ghost",
        "code": "no_such_user",
        "users": ["ghost"],
    }
    assert client.request(f"sendgroup {tokens['messi']} ghost hi") == expected
    assert client.request(f"sendgroupfile {tokens['messi']} ghost a.txt aGk=") == (
        expected
    )
    assert client.request(f"sendfile {tokens['messi']} ghost a.txt aGk=") == {
        "status": "ERROR",
        "message": "User Tidak Ditemukan",
        "code": "no_such_user",
    }
    assert server.store.messages == []


def test_bare_group_name_of_a_group_not_joined() -> None:
    """A bare group name of a group the sender is not in says so."""
    server = Server()
    client, tokens = _team(server)
    reply = client.request(f"sendgroup {tokens['lineker']} bteam hi")
    assert reply["code"] == "not_a_member"
    assert server.store.messages == []


def test_list_with_a_group_name_is_still_users() -> None:
    """In a list of several names, each is a user: a group name is unknown."""
    server = Server()
    client, tokens = _team(server)
    reply = client.request(f"sendgroup {tokens['messi']} henderson,bteam hi")
    assert reply["users"] == ["bteam"]


# File names and the swapped order.


@pytest.mark.parametrize(
    ("sent", "kept"),
    [
        ("/home/me/hi.txt", "hi.txt"),
        ("C:\\Users\\me\\hi.txt", "hi.txt"),
        ("./laporan.pdf", "laporan.pdf"),
        ("files/2023/x.png", "x.png"),
    ],
)
def test_file_name_is_the_last_path_component(sent: str, kept: str) -> None:
    """The path a client sends as the file name becomes its last component."""
    server = Server()
    client, tokens = _logged_in(server)
    reply = client.request(f"sendfile {tokens['messi']} henderson {sent} aGk=")
    assert reply["file_name"] == kept
    (message,) = _inbox(client, tokens["henderson"])["messi"]
    assert message["file_name"] == message["msg"] == kept


@pytest.mark.parametrize(
    "sent",
    ["../../etc/passwd", "a/../b.txt", "/home/me/.bashrc", "/home/me/", "x/.."],
)
def test_paths_with_dot_dot_or_hidden_names_are_refused(sent: str) -> None:
    """A path with a '..' component, or ending in a hidden or no name, is refused."""
    server = Server()
    client, tokens = _logged_in(server)
    reply = client.request(f"sendfile {tokens['messi']} henderson {sent} aGk=")
    assert reply["code"] == "invalid_file_name"
    assert server.store.messages == []


def test_content_before_the_name() -> None:
    """sendfile <token> <to> b'...' <path>, content first, is understood."""
    server = Server()
    client, tokens = _logged_in(server)
    content = base64.b64encode(b"isi file")
    line = f"sendfile {tokens['messi']} henderson {content} /tmp/my notes.txt \r\n"
    reply = _exact(client, line.encode())
    assert reply["file_name"] == "my notes.txt"
    (message,) = _inbox(client, tokens["henderson"])["messi"]
    assert base64.b64decode(message["file_content"]) == b"isi file"


# creategroup with members.


def test_creategroup_with_members() -> None:
    """creategroup <token> <group> <members...> adds each as if they joined."""
    server = Server()
    client, tokens = _logged_in(server)
    line = f"creategroup {tokens['messi']} tim henderson lineker,messi henderson \r\n"
    reply = _exact(client, line.encode())
    assert reply["group"]["members"] == ["messi", "henderson", "lineker"]
    assert reply["group"]["owner"] == "messi"
    client.request(f"sendgroup {tokens['lineker']} #tim hi")
    assert [m["msg"] for m in _inbox(client, tokens["henderson"])["lineker"]] == ["hi"]
    assert client.request(f"joingroup {tokens['henderson']} tim")["code"] == (
        "already_member"
    )


def test_creategroup_with_unknown_members_creates_nothing() -> None:
    """Unknown members are named in the error, and no group is made."""
    server = Server()
    client, tokens = _logged_in(server)
    reply = client.request(f"creategroup {tokens['messi']} tim henderson ghost, Bad!")
    assert reply == {
        "status": "ERROR",
        "message": "User Tidak Ditemukan: ghost, Bad!",
        "code": "no_such_user",
        "users": ["ghost", "Bad!"],
    }
    assert server.store.groups == {}


def test_creategroup_member_limit() -> None:
    """More members than a message may have recipients are refused."""
    server = Server(max_recipients=2)
    client, tokens = _logged_in(server)
    reply = client.request(f"creategroup {tokens['messi']} tim henderson lineker x")
    assert reply["code"] == "too_many_recipients"
    ok = client.request(f"creategroup {tokens['messi']} tim henderson lineker")
    assert ok["group"]["members"] == ["messi", "henderson", "lineker"]


def test_creategroup_without_token_uses_the_connection_login() -> None:
    """creategroup <group> acts as the user that logged in on this connection."""
    server = Server()
    client = server.connect()
    assert client.request("creategroup kopi")["code"] == "no_session"
    client.login("lineker")
    reply = _exact(client, b"creategroup kopi \r\n")
    assert reply["group"]["owner"] == "lineker"


# The lists of users and groups.


def test_user_list_needs_a_login() -> None:
    """Without a login on the connection (or a token) the lists are refused."""
    client = Server().connect()
    for line in [b"getusers \r\n", b"listusers \r\n", b"getallgroups \r\n"]:
        assert _exact(client, line)["message"] == "Session Tidak Ditemukan"
    assert client.request("get_all_users nosuchtoken")["code"] == "no_session"


@pytest.mark.parametrize(
    "line", ["users", "getusers", "getallusers", "get_all_users", "get_all_users {t}"]
)
def test_user_list_public_details(line: str) -> None:
    """The user list gives names, full names and presence, nothing else."""
    server = Server()
    client = server.connect()
    token = client.login("henderson")
    reply = _exact(client, line.format(t=token).encode() + b" \r\n")
    assert reply == {
        "status": "OK",
        "users": [
            {"username": "henderson", "full_name": "Jordan Henderson", "online": True},
            {"username": "lineker", "full_name": "Gary Lineker", "online": False},
            {"username": "messi", "full_name": "Lionel Messi", "online": False},
        ],
        "more": False,
    }


def test_listusers_gives_names() -> None:
    """listusers answers a list of usernames."""
    client = Server().connect()
    client.login("messi")
    reply = _exact(client, b"listusers \r\n")
    assert reply["users"] == ["henderson", "lineker", "messi"]


def test_group_lists_in_each_shape() -> None:
    """Every group of the server, as objects, names, or objects with "group"."""
    server = Server()
    client, tokens = _team(server)
    client.request(f"creategroup {tokens['lineker']} alpha")
    objects = _exact(client, f"getallgroups {tokens['lineker']} \r\n".encode())
    assert [g["name"] for g in objects["groups"]] == ["alpha", "bteam"]
    assert objects["groups"][1] == {
        "name": "bteam",
        "owner": "messi",
        "members": ["messi", "henderson"],
        "created_at": objects["groups"][1]["created_at"],
    }
    assert _exact(client, b"get_all_groups\r\n") == {**objects}
    for line in [b"listgroups \r\n", f"getgroup {tokens['messi']}\r\n".encode()]:
        assert _exact(client, line)["groups"] == ["alpha", "bteam"]
    barpeot = _exact(client, b"getgroups \r\n")["groups"]
    assert [(g["group"], g["members"]) for g in barpeot] == [
        ("alpha", ["lineker"]),
        ("bteam", ["messi", "henderson"]),
    ]


def test_lists_are_capped(monkeypatch: pytest.MonkeyPatch) -> None:
    """A list stops at its limit and says there is more."""
    monkeypatch.setattr(compat, "LIST_LIMIT", 2)
    server = Server()
    client, tokens = _team(server)
    client.request(f"creategroup {tokens['lineker']} alpha")
    users = client.request(f"users {tokens['messi']}")
    assert ([u["username"] for u in users["users"]], users["more"]) == (
        ["henderson", "lineker"],
        True,
    )
    groups = client.request(f"listgroups {tokens['messi']}")
    assert (groups["groups"], groups["more"]) == (["alpha", "bteam"], False)
    client.request(f"creategroup {tokens['lineker']} zeta")
    assert client.request(f"listgroups {tokens['messi']}")["more"] is True


# A group's messages and one sender's.


def _group_chat(server: Server) -> tuple[Connection, dict[str, str]]:
    client, tokens = _team(server)
    client.request(f"sendgroup {tokens['messi']} #bteam one")
    client.request(f"sendgroup {tokens['henderson']} #bteam two")
    client.request(f"send {tokens['messi']} henderson private")
    return client, tokens


def test_groupinbox_is_the_group_history_oldest_first() -> None:
    """groupinbox <token> <group>: the group's messages as a list, oldest
    first, each with a timestamp; reading it marks nothing delivered."""
    server = Server()
    client, tokens = _group_chat(server)
    reply = _exact(client, f"groupinbox {tokens['henderson']} bteam \r\n".encode())
    messages = reply["messages"]
    assert [(m["from"], m["msg"]) for m in messages] == [
        ("messi", "one"),
        ("henderson", "two"),
    ]
    for message in messages:
        assert datetime.fromisoformat(message["timestamp"]).tzinfo is not None
    again = client.request(f"groupinbox {tokens['henderson']} bteam")
    assert again["messages"] == messages
    assert sorted(_inbox(client, tokens["henderson"])) == ["messi"]


def test_inbox_group_is_grouped_by_sender() -> None:
    """inbox_group answers the group's messages grouped by sender, like inbox."""
    server = Server()
    client, tokens = _group_chat(server)
    reply = _exact(client, f"inbox_group {tokens['messi']} bteam \r\n".encode())
    grouped = reply["messages"]
    assert {sender: [m["msg"] for m in got] for sender, got in grouped.items()} == {
        "messi": ["one"],
        "henderson": ["two"],
    }


def test_inboxgroup_is_history() -> None:
    """inboxgroup answers history's page of the group, newest first."""
    server = Server()
    client, tokens = _group_chat(server)
    reply = _exact(client, f"inboxgroup {tokens['messi']} bteam\r\n".encode())
    assert [m["msg"] for m in reply["messages"]] == ["two", "one"]
    assert reply["next_before_id"] is None


@pytest.mark.parametrize("verb", ["groupinbox", "inboxgroup", "inbox_group"])
def test_group_messages_need_membership(verb: str) -> None:
    """Reading a group's messages needs membership, as history does."""
    server = Server()
    client, tokens = _group_chat(server)
    assert client.request(f"{verb} {tokens['lineker']} bteam")["code"] == (
        "not_a_member"
    )
    assert client.request(f"{verb} {tokens['lineker']} nope")["code"] == (
        "no_such_group"
    )
    assert client.request(f"{verb} {tokens['lineker']}")["code"] == ("missing_argument")


@pytest.mark.parametrize("verb", ["privateinbox", "inboxbysender"])
def test_private_inbox_takes_one_senders_private_messages(verb: str) -> None:
    """privateinbox <token> <user> takes, once, the private messages from one user."""
    server = Server()
    client, tokens = _group_chat(server)
    client.request(f"send {tokens['lineker']} henderson from lineker")
    reply = _exact(client, f"{verb} {tokens['henderson']} messi \r\n".encode())
    assert list(reply["messages"]) == ["messi"]
    assert [m["msg"] for m in reply["messages"]["messi"]] == ["private"]
    assert client.request(f"{verb} {tokens['henderson']} messi")["messages"] == {}
    rest = _inbox(client, tokens["henderson"])
    assert {sender: [m["msg"] for m in got] for sender, got in rest.items()} == {
        "messi": ["one"],
        "lineker": ["from lineker"],
    }
    unknown = client.request(f"{verb} {tokens['henderson']} ghost")
    assert unknown["message"] == "User Tidak Ditemukan"


# How the spellings run on the request path.


def test_bare_name_is_one_store_call() -> None:
    """A single bare name is told apart (user or group) inside one store
    operation; '#group' and lists of names never ask for it."""
    server = Server()
    client, tokens = _team(server)
    calls: list[str] = []
    for name in ("store_to_name", "store_messages", "store_group_message"):
        server.store.watch(name, lambda args, name=name: calls.append(name))
    token = tokens["messi"]
    assert client.request(f"sendgroup {token} bteam a")["message"] == "Message Sent"
    assert client.request(f"sendgroup {token} henderson b")["status"] == "OK"
    assert calls == ["store_to_name", "store_to_name"]
    calls.clear()
    assert client.request(f"sendgroup {token} #bteam c")["status"] == "OK"
    assert client.request(f"sendgroup {token} henderson,lineker d")["status"] == "OK"
    assert client.request(f"sendgroup {token} henderson, e")["status"] == "OK"
    assert calls == ["store_group_message", "store_messages", "store_messages"]
    calls.clear()
    client.request(f"sendgroupfile {token} bteam a.txt aGk=")
    assert calls == ["store_to_name"]


def test_sendprivate_to_another_realm() -> None:
    """sendprivate <token> <user>@<realm> goes to that realm, as send does."""
    realms = Realms()
    client, token = realms.login("realm-a", "messi")
    reply = client.request(f"sendprivate {token} henderson@realm-b lintas realm")
    assert reply == {"status": "OK", "message": "Message Sent"}
    realms.settle()
    henderson, other = realms.login("realm-b", "henderson")
    messages = henderson.request(f"inbox {other}")["messages"]
    assert [m["msg"] for m in messages["messi@realm-a"]] == ["lintas realm"]


def test_aliases_count_as_the_command_they_mean() -> None:
    """The metrics count an alias under our command word, never its own."""
    from chat.metrics import Metrics
    from tests.test_metrics import value

    server = Server(metrics=True)
    metrics = server.factory.metrics
    assert isinstance(metrics, Metrics)
    client, tokens = _team(server)
    token = tokens["messi"]
    client.request(f"sendprivate {token} henderson hi")
    client.request(f"send_group {token} bteam hi")
    client.request(f"listgroups {token}")
    client.request(f"groupinbox {token} bteam")
    client.request("sendprivate")
    assert value(metrics, "chat_commands_total", command="send") == 1.0
    assert value(metrics, "chat_commands_total", command="sendgroup") == 1.0
    assert value(metrics, "chat_commands_total", command="allgroups") == 1.0
    assert value(metrics, "chat_commands_total", command="history") == 1.0
    assert value(metrics, "chat_commands_total", command="invalid") == 1.0
    assert value(metrics, "chat_commands_total", command="sendprivate") is None


def test_every_alias_means_a_command_and_a_known_shape() -> None:
    """Each alias names one of our commands, never shadows one, and asks
    only for a shape made for that command's reply."""
    for word, alias in commands.ALIASES.items():
        assert word not in commands.VERBS, word
        assert alias.verb in commands.VERBS, word
        if alias.shape is not None:
            assert compat.SHAPES[alias.shape] == alias.verb, word


def test_groupinbox_pages_like_history() -> None:
    """groupinbox answers history's newest page (oldest first in it), and
    where the next page starts."""
    server = Server()
    client, tokens = _team(server)
    for i in range(commands.HISTORY_LIMIT + 2):
        client.request(f"sendgroup {tokens['messi']} #bteam m{i}")
    reply = client.request(f"groupinbox {tokens['henderson']} bteam")
    texts = [m["msg"] for m in reply["messages"]]
    assert texts == [f"m{i}" for i in range(2, commands.HISTORY_LIMIT + 2)]
    assert reply["next_before_id"] == reply["messages"][0]["id"]
    grouped = client.request(f"inbox_group {tokens['henderson']} bteam")
    assert grouped["next_before_id"] == reply["next_before_id"]
    assert [m["msg"] for m in grouped["messages"]["messi"]] == texts


def _page(more: bool) -> Page:
    messages = (
        Message(9, "ann", "bob", "Ann \u00e9", "Bob", 'a "b"', 1.25, "g"),
        Message(4, "bob", "bob", "Bob", "Bob", "c\nd", 0.5, "g"),
        Message(2, "ann", "bob", "Ann \u00e9", "Bob", "e", 0.0, "g"),
    )
    return Page(messages, more)


@pytest.mark.parametrize("more", [True, False])
def test_history_shapes_are_our_reply_reshaped(more: bool) -> None:
    """Each history shape is our history reply's messages reordered (and
    regrouped or timestamped), as ASCII JSON with the same next page."""
    page = _page(more)
    ours = json.loads(replies.history_json(page))
    timeline_bytes = compat.history_reply(page, compat.TIMELINE)
    by_sender_bytes = compat.history_reply(page, compat.BY_SENDER)
    assert compat.history_reply(page, None) == replies.history_json(page)
    timeline, by_sender = json.loads(timeline_bytes), json.loads(by_sender_bytes)
    oldest_first = ours["messages"][::-1]
    assert timeline == {
        **ours,
        "messages": [
            {**m, "timestamp": m["sent_at"].replace("Z", "+00:00")}
            for m in oldest_first
        ],
    }
    assert by_sender == {
        **ours,
        "messages": {
            "ann": [oldest_first[0], oldest_first[2]],
            "bob": [oldest_first[1]],
        },
    }
    assert list(by_sender["messages"]) == ["ann", "bob"]
    for data in (timeline_bytes, by_sender_bytes):
        assert data.isascii() and b"\n" not in data
