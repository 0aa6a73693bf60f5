"""The hot path: manager facade, group runner, lanes, writer, finaliser, limits."""
