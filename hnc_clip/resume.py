"""Can this checkpoint continue the run? Checked before the Trainer reads it, so a checkpoint saved without its
optimizer (`--save_only_model`), another model's weights or a file cut short is one `CheckpointError` naming the
checkpoint and the file, not a silent restart of the optimizer and schedule, a `load_state_dict(strict=False)`
warning, or a traceback from safetensors / torch.load / json.

The file checks read headers and directories only (a safetensors header and its data length, a torch.save zip's
central directory, which sits at the file's end): a cut file fails them without loading gigabytes of state. What
only loading shows (another model's keys, an optimizer state that does not fit) is refused the same way while the
Trainer loads it (`RefusesUnfitCheckpoints`, `HncTrainer`'s loading hooks).
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import struct
import zipfile

from .errors import CheckpointError

TRAINER_STATE = "trainer_state.json"
OPTIMIZER = ("optimizer.pt", "optimizer.bin")
SCHEDULER = "scheduler.pt"
WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "adapter_model.safetensors")
WITHOUT_OPTIMIZER = (
    "a checkpoint saved with --save_only_model holds no optimizer, scheduler or RNG state, so resuming would restart "
    "AdamW's moments and the learning-rate schedule; to train on from its weights start a new run with "
    "--model_name_or_path {ckpt}"
)


def refuse(ckpt: str, why: str) -> CheckpointError:
    return CheckpointError(f"cannot resume from {ckpt}: {why}")


@contextlib.contextmanager
def refused_on_error(ckpt: str, what: str, max_chars: int | None = None):
    """Any error inside (torch.load and load_state_dict fail in many ways) as one `refuse` line: `what`, then the
    error (whitespace folded and cut to `max_chars` where given)."""
    try:
        yield
    except Exception as err:
        message = str(err) if max_chars is None else " ".join(str(err).split())[:max_chars]
        raise refuse(ckpt, f"{what} ({type(err).__name__}: {message})") from err


def safetensors_problem(path: str) -> str | None:
    """Why a safetensors file cannot be read (header cut or not JSON, data shorter than the header says), or None."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            return "cut short? the header is missing"
        (length,) = struct.unpack("<Q", head)
        if length > size - 8:
            return f"cut short? a {length:,}-byte header in a {size:,}-byte file"
        try:
            header = json.loads(f.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            return f"its header is not JSON: {err}"
    ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)]
    if 8 + length + max(ends, default=0) > size:
        return f"cut short? {size:,} bytes of {8 + length + max(ends, default=0):,}"
    return None


def torch_save_problem(path: str) -> str | None:
    """Why a torch.save file cannot be read (its zip directory, at the end, is missing: cut short), or None."""
    try:
        with zipfile.ZipFile(path) as z:
            z.namelist()
    except (zipfile.BadZipFile, OSError) as err:
        return f"cut short? not a complete torch.save archive ({err})"
    return None


def check_resumable(ckpt: str, deepspeed: bool = False) -> None:
    """Raise `CheckpointError` unless `ckpt` holds what a resume reads, each file whole. Under DeepSpeed the engine
    keeps the optimizer in `global_step*/` (and checks it itself); the trainer state and any weights are checked."""
    if not os.path.isdir(ckpt):
        raise refuse(ckpt, "no such folder")
    if not os.path.isfile(os.path.join(ckpt, TRAINER_STATE)):
        raise refuse(ckpt, f"it has no {TRAINER_STATE} (the step, epoch and logs to continue from)")
    try:
        with open(os.path.join(ckpt, TRAINER_STATE), encoding="utf-8") as f:
            json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise refuse(ckpt, f"{TRAINER_STATE} is damaged (cut short?): {err}") from None
    if not deepspeed:
        if not any(os.path.isfile(os.path.join(ckpt, name)) for name in WEIGHTS):
            raise refuse(ckpt, f"it has no weights (none of {', '.join(WEIGHTS)})")
        for name in (OPTIMIZER[0], SCHEDULER):
            if name == OPTIMIZER[0] and any(os.path.isfile(os.path.join(ckpt, n)) for n in OPTIMIZER):
                continue
            if not os.path.isfile(os.path.join(ckpt, name)):
                raise refuse(ckpt, f"it has no {name}: " + WITHOUT_OPTIMIZER.format(ckpt=ckpt))
    for path in sorted(glob.glob(os.path.join(ckpt, "*.safetensors"))):
        if problem := safetensors_problem(path):
            raise refuse(ckpt, f"{os.path.basename(path)} is damaged ({problem})")
    pickled = [os.path.join(ckpt, n) for n in (*OPTIMIZER, SCHEDULER, "scaler.pt")]
    for path in [*pickled, *sorted(glob.glob(os.path.join(ckpt, "rng_state*.pth")))]:
        if os.path.isfile(path) and (problem := torch_save_problem(path)):
            raise refuse(ckpt, f"{os.path.basename(path)} is damaged ({problem})")


def describe_key_mismatch(weights: str, missing: list[str], unexpected: list[str], shown: int = 5) -> str:
    """`model.safetensors does not hold this model's weights: 2 missing (a, b), 1 unexpected (c)`."""

    def some(keys: list[str]) -> str:
        return ", ".join(keys[:shown]) + (", ..." if len(keys) > shown else "")

    parts = [f"{len(missing)} missing ({some(missing)})"] if missing else []
    parts += [f"{len(unexpected)} unexpected ({some(unexpected)})"] if unexpected else []
    return f"{weights} does not hold this model's weights: {', '.join(parts)}"


class RefusesUnfitCheckpoints:
    """`HncTrainer`'s checkpoint-loading hooks (a mixin before `transformers.Trainer`): what `check_resumable` cannot
    see from the files alone — weights of another model, optimizer or RNG state that do not load — is refused with
    its reason (`refuse`) instead of a warning or a bare traceback."""

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None) -> None:
        self._loading_from = resume_from_checkpoint  # named by `_issue_warnings_after_load`
        try:
            super()._load_from_checkpoint(resume_from_checkpoint, model)
        finally:
            self._loading_from = None

    def _issue_warnings_after_load(self, load_result) -> None:
        """The Trainer loads resumed weights with `strict=False` and only warns: other keys than the model's mean
        another model's checkpoint, and resuming from it would train from a mix of its weights and fresh ones."""
        ignored = set(getattr(self.model, "_keys_to_ignore_on_save", None) or ())  # tied again by the Trainer
        missing = [k for k in load_result.missing_keys if k not in ignored]
        if getattr(self, "_loading_from", None) and (missing or load_result.unexpected_keys):
            raise refuse(self._loading_from, describe_key_mismatch("model.safetensors", missing,
                                                                   list(load_result.unexpected_keys)))  # fmt: skip
        super()._issue_warnings_after_load(load_result)

    def _load_optimizer_and_scheduler(self, checkpoint) -> None:
        # whole files (`check_resumable`) whose state does not fit: another optimizer, other parameter groups
        with refused_on_error(checkpoint, "its optimizer.pt / scheduler.pt do not fit this run", max_chars=300):
            super()._load_optimizer_and_scheduler(checkpoint)

    def _load_rng_state(self, checkpoint) -> None:
        with refused_on_error(checkpoint, "its RNG state cannot be read"):
            super()._load_rng_state(checkpoint)
