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
   group or of one sender;
 - the reply shapes their spellings expect: a list of names or of objects
   (L{chat.commands.ListCommand.shape}).

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


def users_reply(
    listed: tuple[list[Profile], bool], command: commands.ListCommand
) -> Reply:
    profiles, more = listed
    if command.shape == commands.NAMES:
        return commands.ok(users=[p.username for p in profiles], more=more)
    return commands.ok(users=[p.to_wire() for p in profiles], more=more)


def _group_object(group: Group) -> dict[str, object]:
    return {"group": group.name, **group.to_wire()}


def groups_reply(
    listed: tuple[list[Group], bool], command: commands.ListCommand
) -> Reply:
    groups, more = listed
    if command.shape == commands.NAMES:
        return commands.ok(groups=[g.name for g in groups], more=more)
    if command.shape == commands.OBJECTS_WITH_GROUP:
        return commands.ok(groups=[_group_object(g) for g in groups], more=more)
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
    "groupinbox": AvatarCall(
        lambda avatar, command: avatar.group_inbox(command.group),
        lambda messages, _: inbox_reply(messages),
    ),
    "privateinbox": AvatarCall(
        lambda avatar, command: avatar.private_inbox(command.peer),
        lambda messages, _: inbox_reply(messages),
    ),
}
