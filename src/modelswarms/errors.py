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
