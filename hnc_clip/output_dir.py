"""An application's output folder: this run's alone, and nothing half-written in it is ever trusted.

- `claim_folder`: the claim every application takes (training, search, evaluation, conversion, the image cache):
  the lock below for the whole run, and another run's files it would replace refused unless the user passes the
  application's overwrite flag. Training's own rules (resume, old checkpoints) are `claim_output_dir`.

- `claim_output_dir`: a folder that holds another run's model or checkpoints is refused, unless the run resumes
  (`--resume_from_checkpoint`) or `--overwrite_output_dir` is given (the old checkpoints are then deleted, so that
  `--resume_from_checkpoint last` cannot pick one of them up). The main process holds an exclusive lock on
  `.hnc-clip.lock` for the whole run (`flock`): a second run into the same folder stops at once, naming the holder.
  The kernel releases the lock when its process ends, however it ends, so a lock file left by a killed run holds
  nothing (its text only names the last holder).
- `mark_complete` / `last_complete_checkpoint`: a checkpoint counts for `--resume_from_checkpoint last` only once
  every process has written its part (a marker written after a barrier); one cut short (a kill, a full disk) is
  passed over, with a warning.
- `save_final_model`: the final model is written into `.final-model.incomplete/` and its files are then renamed into
  the folder, the weights last: a kill leaves the previous state (the checkpoints), never half a model.
- `is_disk_full` / `DiskFullError`: a save that runs out of space says so, removes what it half-wrote, and names the
  checkpoint a resume will start from.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import re
import shutil
import socket
import time
from collections.abc import Iterable, Iterator

from .errors import DiskFullError, OutputDirInUseError

logger = logging.getLogger(__name__)

LOCK_FILE = ".hnc-clip.lock"
COMPLETE_MARKER = ".complete"
FINAL_TMP = ".final-model.incomplete"
CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
# What a training run leaves in its folder: another run's, if found before this one starts.
RUN_FILES = ("model.safetensors", "model.safetensors.index.json", "adapter_model.safetensors", "trainer_state.json",
             "train_results.json")  # fmt: skip
# What a model folder holds (a conversion's or a training run's output): replaced only on an explicit flag.
MODEL_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "adapter_model.safetensors",
               "config.json")  # fmt: skip
# Published last, in this order: a folder with them holds a whole model (shards before their index).
WEIGHT_FILE = re.compile(r"^(model|adapter_model)(-\d+-of-\d+)?\.(safetensors|bin)(\.index\.json)?$")


# -- the folder ---------------------------------------------------------------------------------------------------


def checkpoints(output_dir: str) -> list[tuple[int, str]]:
    """(step, path) of the `checkpoint-N` folders, oldest first."""
    if not os.path.isdir(output_dir):
        return []
    found = [(int(m.group(1)), os.path.join(output_dir, entry))
             for entry in os.listdir(output_dir) if (m := CHECKPOINT.match(entry))]  # fmt: skip
    return sorted(p for p in found if os.path.isdir(p[1]))


def previous_run(output_dir: str) -> list[str]:
    """What in `output_dir` belongs to a training run: its checkpoint folders and its model and state files."""
    if not os.path.isdir(output_dir):
        return []
    present = [name for name in RUN_FILES if os.path.exists(os.path.join(output_dir, name))]
    return [os.path.basename(path) for _, path in checkpoints(output_dir)] + present


class OutputDirLock:
    """An exclusive `flock` on `<output_dir>/.hnc-clip.lock`, held until `release` or the process's end. `app` names
    the holder in the lock file, so a refused run of any application says which one holds the folder."""

    def __init__(self, output_dir: str, app: str = "hnc-clip-train", flag: str = "--output_dir"):
        self.output_dir, self.app, self.flag = output_dir, app, flag  # `flag` names the folder in the message
        self.path = os.path.join(output_dir, LOCK_FILE)
        self.fd: int | None = None

    def acquire(self) -> OutputDirLock:
        os.makedirs(self.output_dir, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 512, 0).decode(errors="replace").strip() or "a process that wrote nothing yet"
            os.close(fd)
            raise OutputDirInUseError(
                f"another run is writing to {self.flag} {self.output_dir} ({holder}): wait for it to end, or choose "
                f"another {self.flag}"
            ) from None
        except OSError as err:  # e.g. ENOLCK on some network file systems
            os.close(fd)
            logger.warning(f"cannot lock {self.path} ({err}): a concurrent run into this folder would go unnoticed")
            return self
        os.ftruncate(fd, 0)
        since = time.strftime("%Y-%m-%d %H:%M:%S")
        os.pwrite(fd, f"{self.app}, pid {os.getpid()} on {socket.gethostname()}, since {since}\n".encode(), 0)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            # The file stays: unlinking it would let a run that opened it already and one that creates it anew both
            # hold "the" lock.
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


@contextlib.contextmanager
def claim_folder(output_dir: str, app: str, owned: Iterable[str] = (), overwrite: bool = False,
                 overwrite_flag: str = "--overwrite_output_dir", lock: bool = True) -> Iterator[list[str]]:
    """Hold `output_dir` for one run of `app`: the lock for the whole run (a concurrent run of any application into
    the folder stops at once), and the files of `owned` that exist (another run's output this one would replace)
    refused unless `overwrite`. Yields the files found (to be replaced). `lock=False` on processes that write
    nothing (all but the main one)."""
    held = OutputDirLock(output_dir, app).acquire() if lock else None
    try:
        found = [name for name in owned if os.path.exists(os.path.join(output_dir, name))]
        if found and not overwrite:
            raise OutputDirInUseError(
                f"--output_dir {output_dir} holds another run's output ({', '.join(found[:6])}"
                f"{', ...' if len(found) > 6 else ''}): pass {overwrite_flag} to replace it, or choose another "
                "--output_dir"
            )
        if found:
            logger.warning(f"{overwrite_flag}: replacing {', '.join(found)} in {output_dir}")
        yield found
    finally:
        if held is not None:
            held.release()


@contextlib.contextmanager
def claim_output_dir(args, resuming: bool) -> Iterator[None]:
    """Hold `args.output_dir` for this run (see the module docstring). `args`: `HncTrainingArguments`."""
    out = args.output_dir
    try:
        lock = OutputDirLock(out).acquire() if args.should_save else None
    except OutputDirInUseError as err:
        if not getattr(args, "save_on_each_node", False):
            raise
        # The first process of every machine writes the folder then: on storage the machines share, the holder can
        # be another machine of this very run.
        raise OutputDirInUseError(
            f"{err}. With --save_on_each_node every machine writes its own copy of --output_dir: the holder may be "
            "another machine of this run, if the folder is on storage the machines share; drop --save_on_each_node "
            "there (only the first process of all then writes), or give each machine a folder of its own"
        ) from None
    try:
        found = previous_run(out) if args.do_train and not resuming else []
        if found and not args.overwrite_output_dir:
            raise OutputDirInUseError(
                f"--output_dir {out} holds another run ({', '.join(found[:6])}{', ...' if len(found) > 6 else ''}): "
                "pass --resume_from_checkpoint last to continue it, --overwrite_output_dir to replace it, or choose "
                "another --output_dir"
            )
        if found and args.should_save:
            old = checkpoints(out)
            for _, path in old:
                shutil.rmtree(path)
            logger.warning(f"--overwrite_output_dir: replacing the run in {out} (deleted {len(old)} checkpoints)")
        yield
    finally:
        if lock is not None:
            lock.release()


# -- checkpoints --------------------------------------------------------------------------------------------------


def write_atomic(path: str, text: str) -> None:
    """Write `text` to `path` so that a kill or a crash leaves either the old file or the whole new one."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def mark_complete(checkpoint_dir: str) -> None:
    """Record that every process has finished writing `checkpoint_dir` (call after a barrier, on one process)."""
    write_atomic(os.path.join(checkpoint_dir, COMPLETE_MARKER), f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n")


def is_complete(checkpoint_dir: str) -> bool:
    return os.path.isfile(os.path.join(checkpoint_dir, COMPLETE_MARKER))


def last_complete_checkpoint(output_dir: str) -> str | None:
    """The newest checkpoint every process finished writing; newer, partial ones are named in a warning."""
    partial = []
    for _, path in reversed(checkpoints(output_dir)):
        if is_complete(path):
            if partial:
                logger.warning(f"passing over {', '.join(partial)}: not completely written (interrupted or out of "
                               f"disk space); resuming from {os.path.basename(path)}")  # fmt: skip
            return path
        partial.append(os.path.basename(path))
    if partial:
        logger.warning(f"no complete checkpoint in {output_dir}: {', '.join(partial)} were not completely written")
    return None


# -- saving -------------------------------------------------------------------------------------------------------


def is_disk_full(err: BaseException, path: str | None = None) -> bool:
    """Whether `err` (or what caused it) is a full disk or quota: ENOSPC/EDQUOT, their message as safetensors and
    torch wrap them, or (torch's "file write failed" says no more) a folder with less than 64 MiB left."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if any(text in str(err) for text in ("No space left on device", "Disk quota exceeded", "StorageFull")):
            return True
        err = err.__cause__ or err.__context__
    if path is not None:
        with contextlib.suppress(OSError):
            existing = path
            while not os.path.exists(existing) and os.path.dirname(existing) != existing:
                existing = os.path.dirname(existing)
            return shutil.disk_usage(existing).free < 64 << 20
    return False


def disk_full_error(what: str, path: str, output_dir: str, removed: bool) -> DiskFullError:
    free = "?"
    with contextlib.suppress(OSError):
        free = f"{shutil.disk_usage(output_dir).free / 2**20:,.0f} MiB"
    last = last_complete_checkpoint(output_dir)
    resume = (f"resume from {last} (--resume_from_checkpoint last)" if last else "no complete checkpoint to resume "
              "from")  # fmt: skip
    return DiskFullError(
        f"No space left on device while saving {what} to {path} (disk full: {free} free now): "
        f"{'what was written of it has been removed' if removed else 'it is not marked complete'}, so nothing "
        f"half-written will be resumed from. Free space (or choose another --output_dir); {resume}"
    )


@contextlib.contextmanager
def disk_full_after_the_model(what: str, output_dir: str) -> Iterator[None]:
    """Writes after the final model is published (trainer state, metrics, card): a full disk is a `DiskFullError`
    that says the model is saved, not a traceback."""
    try:
        yield
    except Exception as err:
        if not is_disk_full(err, output_dir):
            raise
        free = "?"
        with contextlib.suppress(OSError):
            free = f"{shutil.disk_usage(output_dir).free / 2**20:,.0f} MiB"
        raise DiskFullError(
            f"No space left on device while saving {what} to {output_dir} (disk full: {free} free now); the final "
            "model was saved there before. Free space to keep these files"
        ) from err


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish(tmp: str, output_dir: str) -> None:
    """Move the files of `tmp` into `output_dir`, each by an atomic rename, the weights last (shards before their
    index); then remove `tmp`."""
    names = sorted(os.listdir(tmp), key=lambda n: (bool(WEIGHT_FILE.match(n)), n.endswith(".index.json"), n))
    for name in names:
        src = os.path.join(tmp, name)
        if os.path.isfile(src):
            with open(src, "rb") as f:
                os.fsync(f.fileno())
            os.replace(src, os.path.join(output_dir, name))
    shutil.rmtree(tmp, ignore_errors=True)
    _fsync_dir(output_dir)


def save_final_model(trainer) -> None:
    """`trainer.save_model()` into a temporary folder, then `publish` it into `--output_dir` (every process calls
    this: ZeRO-3 gathers the weights from all of them)."""
    args = trainer.args
    out = args.output_dir
    tmp = os.path.join(out, FINAL_TMP)
    if args.should_save and os.path.exists(tmp):  # left by a run killed while saving
        shutil.rmtree(tmp)
    trainer.accelerator.wait_for_everyone()
    try:
        trainer.save_model(tmp, _internal_call=True)
        trainer.accelerator.wait_for_everyone()
        if args.should_save:
            publish(tmp, out)
    except BaseException as err:
        if args.should_save:
            shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(err, Exception) and is_disk_full(err, out):
            raise disk_full_error("the final model", out, out, removed=True) from err
        raise
    trainer.accelerator.wait_for_everyone()
