"""Errors a user can cause. The CLI turns each into one line and exit code 1."""


class RGFlowError(Exception):
    """Base class: the message says what went wrong and what to do about it."""


class ConfigError(RGFlowError):
    """A preset, YAML file or override is invalid."""


class CheckpointError(RGFlowError):
    """A checkpoint is missing, corrupt, or not an rgflow checkpoint."""


class DataError(RGFlowError):
    """A dataset or input image is missing, unreadable or of the wrong shape."""


class UsageError(RGFlowError):
    """An argument value is out of range or inconsistent with the model."""


class TrainingError(RGFlowError):
    """Training cannot go on (e.g. persistent non-finite losses); the last good checkpoint stays."""


class Interrupted(RGFlowError):
    """The user stopped a run; the message says where its checkpoint is and how to resume."""
