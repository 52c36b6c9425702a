"""The one error type of checkpoint handling."""


class CheckpointError(ValueError):
    """A checkpoint, target or destination that cannot be used; the message says what to do."""
