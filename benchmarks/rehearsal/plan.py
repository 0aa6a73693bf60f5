"""What the rehearsal plays: its sizes, the traffic (batches and messages) and the events."""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass, field

from async_batchstate import MigrationMode

LEGACY = MigrationMode.LEGACY
DUAL = MigrationMode.DUAL_WRITE
READS = MigrationMode.DUAL_WRITE_SUBCOLLECTION_READS
SUB_ONLY = MigrationMode.SUBCOLLECTION_ONLY

FLAGS = {
    LEGACY: ("false", "false", "false"),
    DUAL: ("true", "true", "false"),
    READS: ("true", "true", "true"),
    SUB_ONLY: ("true", "false", "true"),
}
"""The three environment flags of each mode (what a deploy changes)."""


def mode_env(mode: MigrationMode) -> dict[str, str]:
    """The environment of a process deployed in ``mode``."""
    enable, dual, reads = FLAGS[mode]
    return {
        "ENABLE_SUBCOLLECTION_COMPLETIONS": enable,
        "DUAL_WRITE_MODE": dual,
        "USE_SUBCOLLECTION_READS": reads,
    }


@dataclass(frozen=True)
class Config:
    """Sizes of a rehearsal. Times are seconds; ``duration`` is the publishing time."""

    name: str
    duration: float
    rate: float  # messages/s offered (first deliveries), Poisson
    processes: int
    push: int  # how many of the processes serve push (the rest pull)
    sizes: tuple[int, int]  # players per batch, log-uniform
    window: float  # a batch's completions arrive within this many s of its creation
    duplicates: float = 0.05  # publisher retries: a second message, another id
    poison: int = 6
    expiring: float = 0.1  # share of batches that pass their deadline with players missing
    rtt_ms: float = 14.0
    push_rate: float | None = None  # messages/s routed to each push slot (None: an equal share)
    lease: float = 5.0  # callback lease and sweep interval of the fleet
    settle: float = 90.0  # most seconds after the last publish to wait for acks/callbacks
    seed: int = 20


FULL = Config(
    name="rehearsal",
    duration=600.0,
    rate=60.0,  # 120/s: the emulator strands a third of the messages (benchmarks/README.md)
    processes=4,
    push=2,  # the emulator pushes 2 requests at a time per push slot: ~30/s each at best
    sizes=(20, 300),
    window=20.0,
    poison=20,
    settle=180.0,
)
QUICK = Config(
    name="quick-rehearsal",
    duration=70.0,
    rate=15.0,
    processes=2,
    push=1,
    sizes=(10, 60),
    window=6.0,
    poison=6,
    settle=60.0,
)


@dataclass(frozen=True)
class Batch:
    """One batch of the plan."""

    batch_id: str
    created: float  # s after the start
    players: tuple[str, ...]
    deadline: float | None  # s after the start, or None
    expires: bool  # planned to pass its deadline with players missing


@dataclass(frozen=True)
class Message:
    """One published message; ``key`` is its ``k`` attribute."""

    key: str
    at: float  # scheduled publish time, s after the start
    batch_id: str
    player: str
    count: int
    route: int  # index of the processes' slot whose topic carries it
    kind: str  # "first", "duplicate", "straggler" (after the deadline) or "poison"

    def data(self) -> bytes:
        """The message body (the default ``parse_json`` format; broken for some poison)."""
        if self.kind == "poison" and self.player == "":
            return b'{"batch_id": 7, "oops": true'
        body = {"batch_id": self.batch_id, "player": self.player, "predictions_count": self.count}
        return json.dumps(body).encode()

    @property
    def stored(self) -> bool:
        """Whether the completion must end up recorded (poison never is)."""
        return self.kind != "poison"


@dataclass(frozen=True)
class Event:
    """One scheduled action of the driver; ``at`` is a share of ``duration``."""

    at: float
    action: str  # roll, kill, term, cut, blackhole, backfill, verify, cleanup, rollback, forward
    mode: MigrationMode | None = None
    seconds: float = 0.0


EVENTS = (
    Event(0.08, "roll", DUAL),
    Event(0.20, "kill"),
    Event(0.27, "cut", seconds=3.0),
    Event(0.33, "backfill"),
    Event(0.38, "roll", READS),
    Event(0.50, "rollback", LEGACY),
    Event(0.56, "forward", READS),
    Event(0.60, "verify", READS),
    Event(0.64, "blackhole", seconds=3.0),
    Event(0.67, "term"),
    Event(0.71, "roll", SUB_ONLY),
    Event(0.85, "cleanup"),
)
"""The schedule: the migration played as rolling deploys while traffic flows, with failures.

The rollback drill (half the fleet to LEGACY and back) happens while the array is
still written by everyone (DUAL_WRITE_SUBCOLLECTION_READS): the README's rollback
window (steps 1 to 4a). After SUBCOLLECTION_ONLY a LEGACY rollback is not a
supported move (the array is stale, then gone), so the drill is not played there.
"""

PHASES = (
    ("legacy", LEGACY),
    ("dual_write", DUAL),
    ("subcollection_reads", READS),
    ("subcollection_only", SUB_ONLY),
)


@dataclass
class Traffic:
    """Every batch and message of a run, in time order."""

    batches: list[Batch] = field(default_factory=list)
    messages: list[Message] = field(default_factory=list)

    def by_key(self) -> dict[str, Message]:
        """Messages by key."""
        return {m.key: m for m in self.messages}


def traffic(cfg: Config, tag: str) -> Traffic:
    """Batches created as a Poisson process and their completions, open loop.

    Batch sizes are log-uniform in ``cfg.sizes`` (many small batches, a few large);
    a batch is created at a Poisson time so that completions arrive at ``cfg.rate``
    on average, and each player completes at a uniform time within ``cfg.window``.
    An ``expiring`` share gets a deadline shortly after its window and leaves a
    tenth of its players (at least 2) unpublished, but for one straggler published
    after the deadline (recorded LATE). A third of the others get a deadline they
    meet. ``duplicates`` of the messages are published once more 50 ms-1 s later
    (a publisher retry: another message id, maybe another route); ``poison``
    messages are unparsable or name a player outside the roster.
    """
    rng = random.Random(cfg.seed)
    lo, hi = cfg.sizes
    mean = (hi - lo) / math.log(hi / lo)
    last = cfg.duration - cfg.window - 1.0
    out = Traffic()
    t = rng.expovariate(cfg.rate / mean)
    n = 0
    while t < last:
        size = round(math.exp(rng.uniform(math.log(lo), math.log(hi))))
        players = tuple(f"p{i:04d}" for i in range(size))
        expires = rng.random() < cfg.expiring
        deadline: float | None = None
        if expires:
            deadline = t + cfg.window + 3.0
        elif rng.random() < 1 / 3:
            deadline = t + cfg.duration + 3600
        out.batches.append(Batch(f"b{n:05d}-{tag}", t, players, deadline, expires))
        n += 1
        t += rng.expovariate(cfg.rate / mean)
    k = 0
    pull = cfg.processes - cfg.push
    weights = [1.0] * cfg.processes
    if cfg.push_rate is not None and pull:
        share = min(1.0, cfg.push_rate * cfg.push / cfg.rate)  # of all messages, to push slots
        weights = [(1 - share) / pull] * pull + [share / cfg.push] * cfg.push

    def add(at: float, batch_id: str, player: str, count: int, kind: str) -> None:
        nonlocal k
        out.messages.append(
            Message(
                f"m{k:07d}",
                at,
                batch_id,
                player,
                count,
                rng.choices(range(cfg.processes), weights)[0],
                kind,
            )
        )
        k += 1

    for b in out.batches:
        missing = max(2, len(b.players) // 10) if b.expires else 0
        for player in b.players[: len(b.players) - missing]:
            add(
                b.created + 0.3 + rng.uniform(0, cfg.window),
                b.batch_id,
                player,
                rng.randrange(9),
                "first",
            )
        if b.expires:
            assert b.deadline is not None
            add(b.deadline + 2.0, b.batch_id, b.players[-1], 4, "straggler")
    for m in list(out.messages):
        if rng.random() < cfg.duplicates:
            add(m.at + rng.uniform(0.05, 1.0), m.batch_id, m.player, m.count, "duplicate")
    for i in range(cfg.poison):
        b = rng.choice(out.batches)
        # Half unparsable, half a player outside the roster (UnexpectedPlayerError).
        add(
            b.created + rng.uniform(0.5, cfg.window),
            b.batch_id,
            "" if i % 2 else "intruder",
            1,
            "poison",
        )
    out.messages.sort(key=lambda m: m.at)
    return out
