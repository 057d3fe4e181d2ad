"""
chat: a self-hostable chat server and client on Twisted.

Wire-compatible with the course chat client of rm77/progjar
(progjar4c/chatserver), with durable storage, hashed passwords and expiring
sessions.
"""

__version__ = "0.1.0"
