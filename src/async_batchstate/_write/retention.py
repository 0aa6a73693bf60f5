"""Retention: the one home of TTL stamping (``retain_for`` and the ``expire_at`` field).

A finished batch is stamped ``expire_at = finish time + retain_for`` in its finishing
write; its completion and roster documents are stamped afterwards, in bulk, by the
process that runs (or would run) its callback. A Firestore TTL policy on ``expire_at``
deletes them; nothing else does.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from google.cloud.firestore_v1.async_client import AsyncClient
from google.cloud.firestore_v1.field_path import FieldPath

from .._clock import Clock
from .._errors import ConfigurationError
from .._store import names as f
from .._store.ids import validate_seconds
from .._store.refs import Refs

logger = logging.getLogger("async_batchstate")

_BULK = 500
"""Documents per bulk write of stamps (a batched write's limit)."""


def parse_retention(retain_for: object) -> dt.timedelta | None:
    """``retain_for`` as a positive timedelta, or None.

    Raises:
        ConfigurationError: Not a timedelta or a number of seconds, not > 0, or
            beyond what a timedelta holds.
    """
    if retain_for is None:
        return None
    if isinstance(retain_for, dt.timedelta):
        age = retain_for
    else:
        seconds = validate_seconds("retain_for", retain_for, error=ConfigurationError)
        try:
            age = dt.timedelta(seconds=seconds)
        except OverflowError:
            raise ConfigurationError(f"retain_for {retain_for!r} is too large") from None
    if age <= dt.timedelta(0):
        raise ConfigurationError("retain_for must be a positive duration")
    return age


class Retention:
    """Stamps finished batches for a TTL policy; with ``retain_for`` None, stamps nothing.

    Args:
        client: The Firestore client.
        refs: Where batches live.
        retain_for: How long a finished batch is kept (``parse_retention``'s result).
        clock: Source of the finish time (``clock.now()``).
    """

    def __init__(
        self, client: AsyncClient, refs: Refs, retain_for: dt.timedelta | None, clock: Clock
    ) -> None:
        self._client = client
        self._refs = refs
        self._retain_for = retain_for
        self._clock = clock

    def fields(self) -> dict[str, Any]:
        """The finishing write's stamp (empty without retention)."""
        if self._retain_for is None:
            return {}
        return {f.EXPIRE_AT: self._clock.now() + self._retain_for}

    async def stamp_children(self, batch_id: str) -> None:
        """Stamp the batch's completion and roster documents with ``expire_at``.

        Best effort, in bulk writes of 500: a failure is logged and the documents
        stay (a TTL policy only ever deletes stamped documents). No-op without retention.
        """
        stamp = self.fields()
        if not stamp:
            return
        batch_ref = self._refs.batch(batch_id)
        try:
            for name in (self._refs.layout.completions, f.ROSTER):
                stream = batch_ref.collection(name).select([FieldPath.document_id()]).stream()
                write = self._client.batch()
                staged = 0
                async for snap in stream:
                    write.update(snap.reference, stamp)
                    staged += 1
                    if staged == _BULK:
                        await write.commit()
                        write, staged = self._client.batch(), 0
                if staged:
                    await write.commit()
        except Exception:
            logger.exception(
                "could not stamp the documents of batch %r for retention",
                batch_id,
                extra={"batch_id": batch_id},
            )
