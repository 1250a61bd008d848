"""One exception family, so the CLI can print a single clear line instead of a traceback."""


class ModelSwarmsError(Exception):
    """Base class. Its message must name the file, expert, tensor or item at fault."""


class ConfigError(ModelSwarmsError):
    """A config file or option is invalid."""


class ExpertError(ModelSwarmsError):
    """An expert is missing, unreadable, unsafe, or does not match the pool."""


class DataError(ModelSwarmsError):
    """A dataset file or item is missing, malformed or empty."""


class UtilityError(ModelSwarmsError):
    """A utility function failed or returned something unusable."""


class RunError(ModelSwarmsError):
    """A run folder is in a state that forbids the requested action."""


def first_line(err: BaseException, limit: int = 300, with_type: bool = False) -> str:
    """An exception as one short line for a message of ours (a library's error may quote a
    whole traceback or a config dump)."""
    lines = str(err).strip().splitlines()
    if with_type:
        return f"{type(err).__name__}: {lines[0][:limit] if lines else ''}"
    return (lines or [type(err).__name__])[0][:limit]
