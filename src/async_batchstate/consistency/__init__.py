"""Consistency of a batch's two structures: validate, reconcile, sampled validation, alerts.

``AsyncBatchStateManager.validate`` / ``reconcile`` use these; call them directly
to check batches without a manager.
"""

from ._alerts import AlertHook, SlackWebhookAlerter
from ._read import validate
from ._reconcile import ReconcileResult, Source, reconcile
from ._report import ConsistencyReport

__all__ = [
    "AlertHook",
    "ConsistencyReport",
    "ReconcileResult",
    "SlackWebhookAlerter",
    "Source",
    "reconcile",
    "validate",
]
