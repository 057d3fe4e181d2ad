"""
What the course family's clients read, and the commands they added.

Hundreds of students extended the course's chat, each with a client of
their own (issue 17). Their spellings of our commands are aliases in
L{chat.commands.ALIASES}; this module has the rest, as data and pure
functions:

 - the reply keys they read: C{auth} (and C{register}, which logs in) also
   answer C{token_id} and C{realm_id};
 - the commands they added that are one call on the user's avatar and one
   reply (L{CALLS}): the lists of users and groups, and the inbox of one
   sender;
 - the reply shapes their spellings expect (L{SHAPES}): a list of names or
   of objects, a history oldest first or grouped by sender.

The lists answer logged-in connections only (a command without a token
uses the session the connection logged in with), with public details only:
a user's name, full name and whether it is online; a group's name, owner,
members and creation time.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
from twisted.internet.defer import Deferred

from chat import commands
from chat.model import Group, Message, Profile

Reply = dict[str, object]

#: The most users or groups one list gives; "more" says some were left out.
LIST_LIMIT = 1000


def auth_reply(token: str, realm_id: str | None) -> Reply:
    """
    A successful login: the course's C{tokenid}, and the C{token_id} and
    C{realm_id} that some of the family read instead.
    """
    return commands.ok(tokenid=token, token_id=token, realm_id=realm_id)


def inbox_reply(messages: list[Message]) -> Reply:
    """
    The course's inbox shape: messages grouped by sender, in send order.
    """
    grouped: dict[str, list[dict[str, object]]] = {}
    for message in messages:
        grouped.setdefault(message.sender, []).append(message.to_wire())
    return commands.ok(messages=grouped)


def users_reply(listed: tuple[list[Profile], bool], _: object) -> Reply:
    profiles, more = listed
    return commands.ok(users=[p.to_wire() for p in profiles], more=more)


def groups_reply(listed: tuple[list[Group], bool], _: object) -> Reply:
    groups, more = listed
    return commands.ok(groups=[g.to_wire() for g in groups], more=more)


@attrs.frozen
class AvatarCall:
    """
    A command answered by one call on the avatar of its session: C{call}
    gets the avatar and the command, C{reply} the call's result and the
    command.
    """

    call: Callable[[Any, Any], Deferred[Any]]
    reply: Callable[[Any, Any], Reply]


#: The commands answered by one avatar call, by verb.
CALLS: dict[str, AvatarCall] = {
    "users": AvatarCall(lambda avatar, _: avatar.all_users(LIST_LIMIT), users_reply),
    "allgroups": AvatarCall(
        lambda avatar, _: avatar.all_groups(LIST_LIMIT), groups_reply
    ),
    "privateinbox": AvatarCall(
        lambda avatar, command: avatar.private_inbox(command.peer),
        lambda messages, _: inbox_reply(messages),
    ),
}


# Reply shapes: what a spelling's clients read, made from our OK reply.


def _user_names(reply: Reply) -> Reply:
    users: list[dict[str, Any]] = reply["users"]  # type: ignore[assignment]
    return {**reply, "users": [user["username"] for user in users]}


def _group_names(reply: Reply) -> Reply:
    groups: list[dict[str, Any]] = reply["groups"]  # type: ignore[assignment]
    return {**reply, "groups": [group["name"] for group in groups]}


def _group_objects(reply: Reply) -> Reply:
    groups: list[dict[str, Any]] = reply["groups"]  # type: ignore[assignment]
    return {**reply, "groups": [{"group": g["name"], **g} for g in groups]}


def _oldest_first(reply: Reply) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = reply["messages"]  # type: ignore[assignment]
    return messages[::-1]


def _timeline(reply: Reply) -> Reply:
    """
    A history page oldest first, each message with a C{timestamp} that
    C{datetime.fromisoformat} reads on any Python.
    """
    timeline = [
        {**message, "timestamp": message["sent_at"].replace("Z", "+00:00")}
        for message in _oldest_first(reply)
    ]
    return {**reply, "messages": timeline}


def _by_sender(reply: Reply) -> Reply:
    """
    A history page in the inbox's shape: grouped by sender, oldest first.
    """
    grouped: dict[str, list[dict[str, Any]]] = {}
    for message in _oldest_first(reply):
        grouped.setdefault(message["from"], []).append(message)
    return {**reply, "messages": grouped}


#: The reply shapes aliases ask for (L{chat.commands.Alias.shape}).
SHAPES: dict[str, Callable[[Reply], Reply]] = {
    "user-names": _user_names,
    "group-names": _group_names,
    "group-objects": _group_objects,
    "timeline": _timeline,
    "by-sender": _by_sender,
}


def reshape(reply: Reply | None, command: commands.Command) -> Reply | None:
    """
    C{reply} in the shape C{command}'s spelling asked for, if it did (an
    error reply keeps ours).
    """
    shape: str | None = getattr(command, "shape", None)
    if shape is None or reply is None or reply.get("status") != "OK":
        return reply
    return SHAPES[shape](reply)
