"""What a KV call can fail with, in jetmail's terms: nats-py's exceptions never leave the adapter."""

from __future__ import annotations


class KvError(Exception):
    """A KV call failed for a reason none of the subclasses names (a refused request, an invalid key)."""


class KeyExists(KvError):
    """``create`` found the key holding a live value."""


class RevisionMismatch(KvError):
    """A write conditional on a revision found the key at another one: someone wrote it in between."""


class Contended(KvError):
    """A counter could not be updated: every compare-and-set of its attempts lost to another writer."""


class KvUnavailable(KvError):
    """The server did not answer (a timeout, no responders, a cluster electing a leader, a connection
    being re-established): temporary, the same call may succeed a moment later."""
