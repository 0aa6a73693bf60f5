"""Consistency of a batch's two structures: validate, reconcile, sampled validation, alerts.

``AsyncBatchStateManager.validate`` / ``reconcile`` use these; call them directly
to check batches without a manager.
"""

from ._alerts import SlackWebhookAlerter
from ._validate import AlertHook, ConsistencyReport, ReconcileResult, Source, reconcile, validate

__all__ = [
    "AlertHook",
    "ConsistencyReport",
    "ReconcileResult",
    "SlackWebhookAlerter",
    "Source",
    "reconcile",
    "validate",
]
