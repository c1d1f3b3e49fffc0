"""Errors that end a run with a message that names what happened and what to do; the training application prints
the message and exits 1 instead of a traceback (`hnc_clip.scripts.train.cli`)."""

from __future__ import annotations


class RunAbortedError(RuntimeError):
    """The run stopped for a reason its message names."""


class TooManySkippedError(RunAbortedError):
    """More than `--max_skipped_fraction` of the pairs or of the optimizer steps were skipped."""


class NothingTrainedError(RunAbortedError):
    """Training ended without applying a single update (every step skipped): the weights are the base model's."""


class DiskFullError(RunAbortedError):
    """A save ran out of disk space; nothing half-written is left where a resume would trust it."""


class OutputDirInUseError(RunAbortedError):
    """`--output_dir` holds another run, or another run is writing to it now."""


class CheckpointError(RunAbortedError):
    """A checkpoint to resume from cannot continue the run: incomplete, damaged or another model's."""
