"""
The store's interfaces, one per domain: every store (in memory, SQLite,
PostgreSQL) provides each of them, and L{IChatStore} is exactly their
union.
"""

from __future__ import annotations

from typing import Any

import pytest
from zope.interface.interface import InterfaceClass
from zope.interface.verify import verifyClass, verifyObject

from chat.store.interfaces import (
    IChatStore,
    IExternalChanges,
    IGroupStore,
    IHistoryStore,
    IMailboxStore,
    IMessageStore,
    IRealmStore,
    ISessionStore,
    IUserStore,
)
from chat.store.memory import MemoryStore
from chat.store.postgres import PostgresStore
from chat.store.sql import SQLStore
from chat.store.sqlite import SQLiteStore
from tests.test_store import store as store

DOMAINS = [
    IUserStore,
    ISessionStore,
    IMessageStore,
    IMailboxStore,
    IHistoryStore,
    IGroupStore,
    IRealmStore,
]


@pytest.mark.parametrize("interface", [*DOMAINS, IChatStore])
def test_every_store_provides_every_domain(store: Any, interface: Any) -> None:
    """Each store (memory, SQLite, PostgreSQL) provides each domain's
    interface, and the whole store's."""
    assert verifyObject(interface, store)


@pytest.mark.parametrize("cls", [MemoryStore, SQLStore, SQLiteStore, PostgresStore])
@pytest.mark.parametrize("interface", [*DOMAINS, IChatStore])
def test_every_store_class_implements_every_domain(cls: type, interface: Any) -> None:
    """Each store class declares and implements every domain's interface."""
    assert interface.implementedBy(cls)
    assert verifyClass(interface, cls)


def test_sqlite_store_tells_external_changes() -> None:
    """The SQLite store tells changes by other processes; the others do not
    claim to."""
    assert verifyClass(IExternalChanges, SQLiteStore)
    assert not IExternalChanges.implementedBy(MemoryStore)
    assert not IExternalChanges.implementedBy(PostgresStore)


def test_chat_store_is_the_union_of_the_domains() -> None:
    """IChatStore extends every domain's interface and adds only close()."""
    for domain in DOMAINS:
        assert IChatStore.extends(domain)
    inherited = {name for domain in DOMAINS for name in domain.names()}
    assert set(IChatStore.names(all=True)) == inherited | {"close"}
    assert list(IChatStore.names()) == ["close"]


def test_domains_do_not_overlap() -> None:
    """Each store method belongs to exactly one domain."""
    seen: dict[str, InterfaceClass] = {}
    for domain in DOMAINS:
        for name in domain.names():
            assert name not in seen, f"{name} in {seen.get(name)} and {domain}"
            seen[name] = domain


@pytest.mark.parametrize("domain", DOMAINS)
def test_hot_methods_have_both_forms(domain: Any) -> None:
    """Every callback form (C{..._then}) has its Deferred form in the same
    domain."""
    names = set(domain.names())
    for name in names:
        if name.endswith("_then"):
            assert name.removesuffix("_then") in names
