"""Connection settings for the command line: an emulator or a real project, from the environment."""

from __future__ import annotations

import os

from google.auth.exceptions import GoogleAuthError
from google.cloud.firestore_v1.async_client import AsyncClient

from .._errors import ConfigurationError
from ._client_internals import close_channel

EMULATOR_ENV = "FIRESTORE_EMULATOR_HOST"
PROJECT_ENV = "GOOGLE_CLOUD_PROJECT"
DEFAULT_EMULATOR_PROJECT = "demo-async-batchstate"


def client_from_env(project: str | None = None) -> AsyncClient:
    """An ``AsyncClient`` configured like the Google client: emulator host or project from env.

    With ``FIRESTORE_EMULATOR_HOST`` set, talks to that emulator (project from
    ``project``, ``GOOGLE_CLOUD_PROJECT`` or ``demo-async-batchstate``). Otherwise
    needs a project and Application Default Credentials.

    Raises:
        ConfigurationError: Neither an emulator nor a project is configured, or
            the project's credentials cannot be found.
    """
    project = project or os.environ.get(PROJECT_ENV)
    if os.environ.get(EMULATOR_ENV):
        return AsyncClient(project=project or DEFAULT_EMULATOR_PROJECT)
    if not project:
        raise ConfigurationError(
            f"no Firestore configured: set {EMULATOR_ENV}=host:port for an emulator, or "
            f"{PROJECT_ENV} (with Application Default Credentials) for a real project"
        )
    try:
        return AsyncClient(project=project)
    except GoogleAuthError as exc:  # e.g. no Application Default Credentials
        raise ConfigurationError(f"no credentials for project {project!r}: {exc}") from exc


async def aclose_client(client: AsyncClient) -> None:
    """Close the client's gRPC channel (``AsyncClient`` has no public ``close``)."""
    await close_channel(client)
