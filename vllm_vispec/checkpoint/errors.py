"""The one error type of checkpoint handling, and the pieces its one-line messages share."""


class CheckpointError(ValueError):
    """A checkpoint, target or destination that cannot be used; the message says what to do."""


def reason(e: BaseException) -> str:
    """The root cause of an exception as a short single line, for embedding in a message."""
    while e.__cause__ is not None:
        e = e.__cause__
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    first = lines[0].split(". ")[0].rstrip(".") if lines else ""
    return f"{type(e).__name__}: {first if len(first) <= 150 else first[:147] + '...'}"


def few(names: list[str], n: int = 3) -> str:
    """The first ``n`` names, for a message that must stay one line."""
    return ", ".join(names[:n]) + (", ..." if len(names) > n else "")
