"""
What the course family's clients read, as pure functions from our values
to reply bytes.

Hundreds of students extended the course's chat, each with a client of
their own (issue 17). Their spellings of our commands are aliases in
L{chat.aliases.ALIASES}; this module has the rest:

 - the reply keys they read: C{auth} (and C{register}, which logs in) also
   answer C{token_id} and C{realm_id};
 - the replies of the commands they added (the lists of users and groups),
   in our shape or in the shape an alias asks for (L{SHAPES}): a list of
   names or of objects, a history oldest first or grouped by sender.

The lists answer logged-in connections only (a command without a token
uses the session the connection logged in with), with public details only:
a user's name, full name and whether it is online; a group's name, owner,
members and creation time.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from chat.model import Group, Page, Profile
from chat.replies import (
    dumps,
    group_fields,
    history_json,
    inbox_json,
    iso_utc,
    message_json,
    ok,
    profile_fields,
)

#: The most users or groups one list gives; "more" says some were left out.
LIST_LIMIT = 1000

# The reply shapes aliases ask for (L{chat.aliases.Alias.shape}).

#: users: a list of usernames.
USER_NAMES = "user-names"
#: allgroups: a list of group names.
GROUP_NAMES = "group-names"
#: allgroups: a list of groups, each also with its name as "group".
GROUP_OBJECTS = "group-objects"
#: history: oldest first, each message with a "timestamp" that
#: C{datetime.fromisoformat} reads on any Python.
TIMELINE = "timeline"
#: history: grouped by sender, oldest first, as inbox answers.
BY_SENDER = "by-sender"
#: sendfilerealm: "File Sent to Group in Realm", as sendgrouprealm's
#: "Message Sent to Group in Realm" (sendgroupfilerealm).
GROUP_IN_REALM = "group-in-realm"

#: Each shape, and the command whose reply it reshapes.
SHAPES: dict[str, str] = {
    USER_NAMES: "users",
    GROUP_NAMES: "allgroups",
    GROUP_OBJECTS: "allgroups",
    TIMELINE: "history",
    BY_SENDER: "history",
    GROUP_IN_REALM: "sendfilerealm",
}


def auth_fields(token: str, realm_id: str | None) -> dict[str, object]:
    """
    A successful login: the course's C{tokenid}, and the C{token_id} and
    C{realm_id} that some of the family read instead.
    """
    return ok(tokenid=token, token_id=token, realm_id=realm_id)


def users_reply(profiles: Sequence[Profile], more: bool, shape: str | None) -> bytes:
    """
    The users' public profiles (or, in L{USER_NAMES}, their names), and
    whether some were left out.
    """
    if shape == USER_NAMES:
        return dumps(ok(users=[p.username for p in profiles], more=more))
    return dumps(ok(users=[profile_fields(p) for p in profiles], more=more))


def groups_reply(groups: Sequence[Group], more: bool, shape: str | None) -> bytes:
    """
    The groups (in L{GROUP_NAMES}, their names; in L{GROUP_OBJECTS}, each
    with a C{group} key too), and whether some were left out.
    """
    listed: list[object]
    if shape == GROUP_NAMES:
        listed = [group.name for group in groups]
    elif shape == GROUP_OBJECTS:
        listed = [{"group": group.name, **group_fields(group)} for group in groups]
    else:
        listed = [group_fields(group) for group in groups]
    return dumps(ok(groups=listed, more=more))


def history_reply(page: Page, shape: str | None) -> bytes:
    """
    One page of a history: our reply (newest first), or in L{TIMELINE} or
    L{BY_SENDER} shape, oldest first; C{next_before_id} in every shape.
    """
    if shape is None:
        return history_json(page)
    messages = page.messages
    next_before_id = json.dumps(messages[-1].id if page.more and messages else None)
    oldest_first = messages[::-1]
    if shape == BY_SENDER:
        grouped = inbox_json(oldest_first)
        return grouped[:-1] + b',"next_before_id":%s}' % next_before_id.encode()
    if shape != TIMELINE:
        raise ValueError(f"no such history shape: {shape!r}")
    items = ",".join(
        f'{message_json(m)[:-1]},"timestamp":"{iso_utc(m.sent_at)[:-1]}+00:00"}}'
        for m in oldest_first
    )
    return (
        f'{{"status":"OK","messages":[{items}],"next_before_id":{next_before_id}}}'
    ).encode("ascii")
