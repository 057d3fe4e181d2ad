"""
The course family's spellings of our commands (issue 17): L{ALIASES}, each
an L{Alias} naming the command it means (L{chat.commands}) and, where that
family's clients read another reply, the reply's shape (L{chat.compat}).
"""

from __future__ import annotations

from collections.abc import Callable

import attrs

from chat.grammar import VERBS, Command


def group_target(rest: str) -> str:
    """
    C{<token> <group> ...} as C{<token> #<group> ...}: the target of a
    C{history} is a group.
    """
    found = rest.split(None, 2)
    if len(found) > 1 and not found[1].startswith("#"):
        found[1] = f"#{found[1]}"
    return " ".join(found)


@attrs.frozen
class Alias:
    """
    Another spelling of one of our commands, from the course family's
    clients: the same rules, limits and errors. C{arguments}, if set,
    rewrites the rest of the line into our command's arguments; C{shape},
    if set, names the shape of the reply that spelling's clients read
    (L{chat.compat.SHAPES}).
    """

    verb: str
    shape: str | None = None
    arguments: Callable[[str], str] | None = None

    @property
    def plain(self) -> bool:
        """
        Whether it is only another word for our command: the same
        arguments and the same reply.
        """
        return self.shape is None and self.arguments is None

    def parse(self, rest: str) -> Command:
        if self.arguments is not None:
            rest = self.arguments(rest)
        command = VERBS[self.verb].from_arguments(rest)
        if self.shape is None:
            return command
        return attrs.evolve(command, shape=self.shape)  # type: ignore[misc]


#: The course family's spellings (issue 17) and our commands they mean.
ALIASES: dict[str, Alias] = {
    # Private messages and files.
    "sendprivate": Alias("send"),
    "sendprivatefile": Alias("sendfile"),
    "inboxbysender": Alias("privateinbox"),
    # Groups.
    "addgroup": Alias("creategroup"),
    "create_group": Alias("creategroup"),
    "join_group": Alias("joingroup"),
    "exitgroup": Alias("leavegroup"),
    "leave_group": Alias("leavegroup"),
    "send_group": Alias("sendgroup"),
    "send_file_group": Alias("sendgroupfile"),
    # A group's messages, <token> <group>: its history, as those clients'
    # servers answered (the newest 50; the inbox still has them).
    "groupinbox": Alias("history", "timeline", group_target),
    "inboxgroup": Alias("history", None, group_target),
    "inbox_group": Alias("history", "by-sender", group_target),
    # Lists of users and groups.
    "getusers": Alias("users"),
    "getallusers": Alias("users"),
    "get_all_users": Alias("users"),
    "listusers": Alias("users", "user-names"),
    "getgroups": Alias("allgroups", "group-objects"),
    "getallgroups": Alias("allgroups"),
    "get_all_groups": Alias("allgroups"),
    "getgroup": Alias("allgroups", "group-names"),
    "listgroups": Alias("allgroups", "group-names"),
    # Other realms.
    "inboxrealm": Alias("getrealminbox"),
    # Files to other realms.
    "sendprivatefilerealm": Alias("sendfilerealm"),
    "sendgroupfilerealm": Alias("sendfilerealm", "group-in-realm"),
}
