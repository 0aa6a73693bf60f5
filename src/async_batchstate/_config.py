"""Migration modes and the environment flags that select them."""

from __future__ import annotations

import enum
import os
from collections.abc import Mapping

from ._errors import ConfigurationError

__all__ = ["MigrationMode"]

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})

ENV_ENABLE = "ENABLE_SUBCOLLECTION_COMPLETIONS"
ENV_DUAL = "DUAL_WRITE_MODE"
ENV_READS = "USE_SUBCOLLECTION_READS"


def _flag(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None:
        return default
    if not isinstance(raw, str):
        raise ConfigurationError(f"{name} must be a str in env, not {type(raw).__name__}")
    if raw.strip() == "":
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigurationError(
        f"{name}={raw!r} is not a boolean; use one of true/false, 1/0, yes/no, on/off"
    )


class MigrationMode(enum.Enum):
    """Which completion structures are written and which one is read.

    | mode | writes | reads |
    |---|---|---|
    | ``LEGACY`` | array + map + total | array |
    | ``DUAL_WRITE`` (default) | both, in one Commit | array |
    | ``DUAL_WRITE_SUBCOLLECTION_READS`` | both, in one Commit | subcollection |
    | ``SUBCOLLECTION_ONLY`` | subcollection + counters | subcollection |
    """

    LEGACY = "legacy"
    DUAL_WRITE = "dual_write"
    DUAL_WRITE_SUBCOLLECTION_READS = "dual_write_subcollection_reads"
    SUBCOLLECTION_ONLY = "subcollection_only"

    @property
    def writes_legacy(self) -> bool:
        """Whether the legacy array, map and ``total_predictions`` are written."""
        return self is not MigrationMode.SUBCOLLECTION_ONLY

    @property
    def writes_subcollection(self) -> bool:
        """Whether completion documents and the subcollection counters are written."""
        return self is not MigrationMode.LEGACY

    @property
    def reads_subcollection(self) -> bool:
        """Whether progress is read from the subcollection counters (else the array)."""
        return self in (
            MigrationMode.DUAL_WRITE_SUBCOLLECTION_READS,
            MigrationMode.SUBCOLLECTION_ONLY,
        )

    @classmethod
    def from_flags(
        cls, *, enable_subcollection: bool, dual_write: bool, subcollection_reads: bool
    ) -> MigrationMode:
        """Map the three legacy feature flags onto a mode.

        Raises:
            ConfigurationError: A flag that is not a bool, or flags that read from a
                structure that is not written.
        """
        flags = {
            "enable_subcollection": enable_subcollection,
            "dual_write": dual_write,
            "subcollection_reads": subcollection_reads,
        }
        for name, value in flags.items():
            if not isinstance(value, bool):
                raise ConfigurationError(f"{name} must be True or False, not {value!r}")
        if not enable_subcollection:
            if subcollection_reads:
                raise ConfigurationError(
                    f"{ENV_READS}=true needs {ENV_ENABLE}=true: reads would come from a "
                    "subcollection that is never written"
                )
            return cls.LEGACY
        if dual_write:
            return cls.DUAL_WRITE_SUBCOLLECTION_READS if subcollection_reads else cls.DUAL_WRITE
        if not subcollection_reads:
            raise ConfigurationError(
                f"{ENV_DUAL}=false with {ENV_READS}=false reads the legacy array, which this "
                f"mode no longer writes; set {ENV_READS}=true (subcollection only) or "
                f"{ENV_DUAL}=true"
            )
        return cls.SUBCOLLECTION_ONLY

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> MigrationMode:
        """Read the mode from the three environment flags.

        The flags are ``ENABLE_SUBCOLLECTION_COMPLETIONS``, ``DUAL_WRITE_MODE`` and
        ``USE_SUBCOLLECTION_READS``. Unset flags default to ``true``, ``true``,
        ``false``: ``DUAL_WRITE``.

        Args:
            env: The environment to read; ``os.environ`` by default.

        Raises:
            ConfigurationError: ``env`` is not a mapping, a flag is not a boolean, or
                the flags contradict each other.
        """
        env = os.environ if env is None else env
        if not isinstance(env, Mapping):
            raise ConfigurationError(f"env must be a mapping, not {type(env).__name__}")
        return cls.from_flags(
            enable_subcollection=_flag(env, ENV_ENABLE, True),
            dual_write=_flag(env, ENV_DUAL, True),
            subcollection_reads=_flag(env, ENV_READS, False),
        )
