"""A fleet rehearsal: the success criteria measured end to end through Pub/Sub, with failures.

``python -m benchmarks.rehearsal`` (``--quick`` for CI) starts the Pub/Sub emulator,
the Firestore emulator behind a delay proxy, and a fleet of coordinator processes
(pull consumers and push endpoints, each an ``AsyncBatchStateManager``); publishes
batches' completions open loop with duplicates and poison; kills, drains, cuts and
black-holes on a schedule while it plays the migration as rolling deploys; then
checks every batch and writes the criteria per phase under ``benchmarks/results/``.
"""
