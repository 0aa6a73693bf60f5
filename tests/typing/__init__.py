"""Files only type-checked (by mypy, in CI), never run or collected by pytest."""
