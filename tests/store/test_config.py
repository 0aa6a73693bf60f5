"""Migration modes from the environment flags (unit, no I/O)."""

from __future__ import annotations

import pytest

from async_batchstate import ConfigurationError, MigrationMode


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, MigrationMode.DUAL_WRITE),
        ({"ENABLE_SUBCOLLECTION_COMPLETIONS": "false"}, MigrationMode.LEGACY),
        (
            {"ENABLE_SUBCOLLECTION_COMPLETIONS": "false", "DUAL_WRITE_MODE": "false"},
            MigrationMode.LEGACY,
        ),
        ({"DUAL_WRITE_MODE": "true", "USE_SUBCOLLECTION_READS": "false"}, MigrationMode.DUAL_WRITE),
        ({"USE_SUBCOLLECTION_READS": "true"}, MigrationMode.DUAL_WRITE_SUBCOLLECTION_READS),
        (
            {"DUAL_WRITE_MODE": "false", "USE_SUBCOLLECTION_READS": "true"},
            MigrationMode.SUBCOLLECTION_ONLY,
        ),
        (
            {"ENABLE_SUBCOLLECTION_COMPLETIONS": "1", "DUAL_WRITE_MODE": " On "},
            MigrationMode.DUAL_WRITE,
        ),
        ({"DUAL_WRITE_MODE": ""}, MigrationMode.DUAL_WRITE),
    ],
)
def test_flags_select_the_documented_mode(env: dict[str, str], expected: MigrationMode) -> None:
    """The table in DESIGN.md section 2, row by row, including unset and blank flags."""
    assert expected is MigrationMode.from_env(env)


@pytest.mark.parametrize(
    "env",
    [
        {"ENABLE_SUBCOLLECTION_COMPLETIONS": "false", "USE_SUBCOLLECTION_READS": "true"},
        {"DUAL_WRITE_MODE": "false", "USE_SUBCOLLECTION_READS": "false"},
        {"DUAL_WRITE_MODE": "false"},
    ],
)
def test_contradictory_flags_are_a_configuration_error(env: dict[str, str]) -> None:
    """Reading a structure that is not written is refused, not silently worked around."""
    with pytest.raises(ConfigurationError, match="USE_SUBCOLLECTION_READS"):
        MigrationMode.from_env(env)


def test_a_flag_that_is_not_a_boolean_is_rejected() -> None:
    """A typo such as 'ture' is an error naming the flag, not a silent false."""
    with pytest.raises(ConfigurationError, match="DUAL_WRITE_MODE='ture'"):
        MigrationMode.from_env({"DUAL_WRITE_MODE": "ture"})


def test_explicit_mode_overrides_the_environment(
    monkeypatch: pytest.MonkeyPatch, firestore_client: object
) -> None:
    """A mode passed to the manager wins over contradictory environment flags."""
    from async_batchstate import AsyncBatchStateManager

    monkeypatch.setenv("DUAL_WRITE_MODE", "false")  # contradictory alone
    manager = AsyncBatchStateManager(firestore_client, mode=MigrationMode.LEGACY)  # type: ignore[arg-type]
    assert MigrationMode.LEGACY is manager.mode


def test_manager_reads_the_environment_at_construction(
    monkeypatch: pytest.MonkeyPatch, firestore_client: object
) -> None:
    """Without an explicit mode, contradictory flags fail the constructor."""
    from async_batchstate import AsyncBatchStateManager

    monkeypatch.setenv("ENABLE_SUBCOLLECTION_COMPLETIONS", "false")
    monkeypatch.setenv("USE_SUBCOLLECTION_READS", "true")
    with pytest.raises(ConfigurationError):
        AsyncBatchStateManager(firestore_client)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("mode", "legacy", "subcollection", "reads_sub"),
    [
        (MigrationMode.LEGACY, True, False, False),
        (MigrationMode.DUAL_WRITE, True, True, False),
        (MigrationMode.DUAL_WRITE_SUBCOLLECTION_READS, True, True, True),
        (MigrationMode.SUBCOLLECTION_ONLY, False, True, True),
    ],
)
def test_mode_properties(
    mode: MigrationMode, legacy: bool, subcollection: bool, reads_sub: bool
) -> None:
    """What each mode writes and reads."""
    assert (legacy, subcollection, reads_sub) == (
        mode.writes_legacy,
        mode.writes_subcollection,
        mode.reads_subcollection,
    )


@pytest.mark.parametrize("size", [0, 1501])
def test_group_size_is_bounded_by_the_request_limit(size: int, firestore_client: object) -> None:
    """A group is one request: sizes that could outgrow 10 MiB are refused at construction."""
    from async_batchstate import AsyncBatchStateManager

    with pytest.raises(ConfigurationError, match="10 MiB"):
        AsyncBatchStateManager(
            firestore_client,  # type: ignore[arg-type]
            mode=MigrationMode.DUAL_WRITE,
            max_group_size=size,
        )
