"""The hot path: manager facade, group runner, lanes, writer, finalizer, limits."""
