"""The push service of docs/pubsub.md without Starlette, for the scale-in tests.

Serve with ``uvicorn tests._push_service:app --timeout-graceful-shutdown 6`` (the
docs' flag). ``FIRESTORE_EMULATOR_HOST``, ``GOOGLE_CLOUD_PROJECT`` and
``PUSH_COLLECTION`` come from the environment. As in the docs: the lifespan
opens the manager and the endpoint at startup and, at shutdown (after uvicorn's
own wait for requests in flight), runs ``endpoint.shutdown(budget=2.0)``: what
is left of the drain, the manager's close and the callback hand-off.
"""

from __future__ import annotations

import os
from typing import Any

from google.cloud import firestore

from async_batchstate import AsyncBatchStateManager, MigrationMode
from async_batchstate.pubsub import PushEndpoint


class Service:
    """A plain ASGI app: a lifespan around one ``PushEndpoint``."""

    endpoint: PushEndpoint

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    manager = AsyncBatchStateManager(
                        firestore.AsyncClient(),
                        collection=os.environ["PUSH_COLLECTION"],
                        mode=MigrationMode.DUAL_WRITE,
                    )
                    self.endpoint = PushEndpoint(manager, max_concurrency=50)
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await self.endpoint.shutdown(budget=2.0)
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        await self.endpoint(scope, receive, send)


app = Service()
