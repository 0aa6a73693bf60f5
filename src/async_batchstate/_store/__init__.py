"""The storage layer: schema (fields, refs, ids, per-mode decode), roster, connection."""
