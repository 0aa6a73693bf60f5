"""The hot path: manager facade, lanes, group runner, writer, finaliser, retry, limits."""
