"""Which member an ALREADY_EXISTS refusal names: a hint for the retry, never an outcome."""

from __future__ import annotations

from dataclasses import dataclass

from google.api_core import exceptions as gexc
from hypothesis import given
from hypothesis import strategies as st

from async_batchstate._write.reads import named_member


@dataclass(frozen=True)
class _Ref:
    path: str


def _refs(*players: str) -> dict[str, _Ref]:
    return {p: _Ref(f"batches/b/completions/{p}") for p in players}


def test_the_emulator_names_the_member_in_an_entity_ref() -> None:
    refusal = gexc.AlreadyExists(
        "entity already exists: EntityRef{partitionRef=dev~p, path=/batches/b/completions/p2}"
    )
    assert "p2" == named_member(refusal, _refs("p1", "p2", "p20"))


def test_firestore_names_the_member_at_the_end_of_its_name() -> None:
    refusal = gexc.AlreadyExists(
        "Document already exists: "
        "projects/p/databases/(default)/documents/batches/b/completions/p20"
    )
    assert "p20" == named_member(refusal, _refs("p2", "p20", "p200"))


def test_an_id_that_reads_as_another_with_more_after_it_names_nobody() -> None:
    """``a`` and ``a}`` both end where the emulator's brace does: no guess."""
    refusal = gexc.AlreadyExists("entity already exists: EntityRef{path=/batches/b/completions/a}}")
    assert named_member(refusal, _refs("a", "a}")) is None


def test_a_refusal_that_names_no_member_names_nobody() -> None:
    assert named_member(gexc.AlreadyExists("entity already exists"), _refs("p1")) is None
    other = gexc.AlreadyExists("Document already exists: .../documents/batches/c/completions/p1")
    assert named_member(other, _refs("p1")) is None


@given(
    st.lists(
        st.text(st.characters(exclude_characters="/"), min_size=1, max_size=8),
        min_size=1,
        max_size=6,
        unique=True,
    ),
    st.data(),
)
def test_the_hint_is_the_named_member_or_nobody(players: list[str], data: st.DataObject) -> None:
    """Whatever the ids, the hint is the member named or nobody; nobody only when another
    member's id is a prefix of the named one's (then the text could name either)."""
    refs = _refs(*players)
    target = data.draw(st.sampled_from(players))
    text = f"entity already exists: EntityRef{{partitionRef=dev~p, path=/{refs[target].path}}}"
    named = named_member(gexc.AlreadyExists(text), refs)
    assert named in (target, None)
    if not any(p != target and target.startswith(p) for p in players):
        assert target == named
