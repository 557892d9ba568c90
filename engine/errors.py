"""The one exception type for bad input: its message names the problem and the fix."""


class InputError(ValueError):
    """Bad user input (files, annotations, job specs). Raised before any computation starts."""


def preview(items, limit: int = 10) -> str:
    """``a, b, c (+12 more)``: a readable list of offending IDs for an error message."""
    items = [str(i) for i in items]
    head = ", ".join(items[:limit])
    return head + (f" (+{len(items) - limit} more)" if len(items) > limit else "")
