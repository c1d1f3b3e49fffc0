"""A run over several machines that loses one stops, on every machine, with one message and exit 1 — in seconds, not
after the process group's 30-minute timeout with every other GPU idle.

- A peer process that dies on a machine that stays up (a crash, the OOM killer, a killed job step) has its sockets
  closed by the kernel: the next gloo collective fails at once ("Connection closed by peer"). `is_peer_lost`
  recognises such errors and the training application prints `peer_lost_message` instead of a trace.
- A machine that loses power, hangs or is cut off closes nothing (and NCCL may wait even for a dead process): the
  collective would wait for the process group's timeout (`--ddp_timeout`, 1800 s; the Trainer does not even pass it
  to gloo under `--use_cpu`). `watch_peers` bounds that wait by `--peer_timeout`. One thread (`_beat`, the only one
  doing I/O) adds to this process's counter in the launcher's key-value store (the c10d `TCPStore` at
  `MASTER_ADDR:MASTER_PORT`, through a connection of its own) every `peer_timeout / 6` seconds and reads the
  counters it watches: process 0 every other process's, the others process 0's. Another (`_judge`, timing only)
  ends the process when a watched counter has not moved for `peer_timeout` seconds of rounds the store answered, or
  the store itself has not answered for that long (it lives on machine 0; a call to a frozen host can block for
  good). It ends it at once (`os._exit(1)`): the main thread is blocked inside the collective and cannot be
  interrupted, and `hnc_clip.output_dir` already trusts nothing a kill can leave half-written. Process 0's exit
  closes its sockets and silences its counter, so the other machines stop too. The training loop is not touched:
  no host sync, no collective.

One machine needs no watch (a dead local process closes its sockets), so it runs only when the processes span
several machines. A process that leaves normally marks its counter done; one that leaves with an error does not,
so its peers notice its silence.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta

logger = logging.getLogger(__name__)

# Added to a counter by a process leaving the run normally: its silence from then on is not a loss.
DONE = 1 << 40
# What a collective or store call raises when the process at the other end is gone (gloo, NCCL, c10d store).
PEER_LOST_TEXTS = (
    "Connection reset by peer", "Connection closed by peer", "Broken pipe", "remote process exited", "ncclRemoteError",
    "Timed out waiting", "Socket Timeout", "collective operation timeout",
)  # fmt: skip


def is_peer_lost(err: BaseException) -> bool:
    """Whether `err` (or what caused it) is a collective or store failing because a peer process is gone."""
    import torch.distributed as dist

    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, (dist.DistNetworkError, dist.DistStoreError)):
            return True
        if isinstance(err, RuntimeError) and any(text in str(err) for text in PEER_LOST_TEXTS):
            return True
        err = err.__cause__ or err.__context__
    return False


def peer_lost_message(what: str, output_dir: str) -> str:
    """`what`: which peer, and how it was noticed. Names the checkpoint a resume will continue from."""
    from .output_dir import last_complete_checkpoint

    last = None
    with contextlib.suppress(Exception):  # the folder may sit on the lost machine's network share
        last = last_complete_checkpoint(output_dir)
    resume = f"from {last}" if last else f"from the newest complete checkpoint in {output_dir} (none yet)"
    return (
        f"lost a peer of this run: {what}. Every process holds a part of each step, so the run stops on every "
        "machine. Restart the job on all machines with the same flags and --resume_from_checkpoint last: it "
        f"continues {resume}"
    )


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0][:300]


def collective_failure(err: BaseException) -> str:
    """`peer_lost_message`'s `what` for an error `is_peer_lost` recognised."""
    return f"a collective failed ({type(err).__name__}: {_first_line(err)})"


class PeerWatch:
    """The heartbeat of the module docstring; `start` then `stop` (or `watch_peers`)."""

    def __init__(self, rank: int, world_size: int, local_world_size: int, host: str, port: int, timeout: float,
                 output_dir: str, run_id: str = "none", on_lost: Callable[[str], None] | None = None):  # fmt: skip
        """`on_lost(message)`: what to do when a peer is lost (default: print the message, exit 1 at once)."""
        self.rank, self.world_size, self.local_world_size = rank, world_size, max(1, local_world_size)
        self.host, self.port, self.timeout, self.output_dir = host, port, timeout, output_dir
        self.interval = max(0.5, timeout / 6)
        self.prefix = f"hnc_clip/peers/{run_id}"
        self.watched = [r for r in range(world_size) if r != rank] if rank == 0 else [0]
        self._stop = threading.Event()
        self._done = False
        self._threads: list[threading.Thread] = []
        self._lost_lock = threading.Lock()
        self.on_lost = on_lost or exit_with

    def _key(self, rank: int) -> str:
        return f"{self.prefix}/{rank}"

    def _machine(self, rank: int) -> str:
        machines = self.world_size // self.local_world_size
        return f"process {rank} (machine {rank // self.local_world_size} of {machines})"

    def start(self) -> PeerWatch:
        now = time.monotonic()
        self._answered = now  # when the store last answered a whole round
        self._seen = {r: (None, now) for r in self.watched}  # rank → (its counter, when it last moved)
        self._threads = [threading.Thread(target=target, name=f"hnc-clip-peer-{name}", daemon=True)
                         for name, target in (("beat", self._beat), ("judge", self._judge))]  # fmt: skip
        for thread in self._threads:
            thread.start()
        return self

    def stop(self, done: bool = True) -> None:
        """End the watch. `done`: this process leaves the run normally: say so in the store, and its peers ignore
        its silence from then on. Not done (an error on this process alone), they notice its silence."""
        self._done = done
        self._stop.set()
        for thread in self._threads if done else []:
            thread.join(timeout=self.timeout)
        self._threads = []

    def _beat(self) -> None:
        """Store I/O only. A call to a store whose host is frozen or cut off can block for good (the client's
        timeout bounds waiting for a key, not a reply): `_judge` watches how long ago a round came back."""
        import torch.distributed as dist

        try:
            store = dist.TCPStore(self.host, self.port, is_master=False, timeout=timedelta(seconds=self.timeout),
                                  wait_for_workers=False)  # fmt: skip
            while True:
                store.add(self._key(self.rank), 1)
                if self._stop.is_set():
                    if self._done:
                        store.add(self._key(self.rank), DONE)
                    return
                for r in self.watched:
                    value = store.add(self._key(r), 0)
                    if value != self._seen[r][0]:
                        self._seen[r] = (value, time.monotonic())
                self._answered = time.monotonic()
                self._stop.wait(self.interval)
        except Exception as err:  # the store's host (machine 0) is gone
            if not self._stop.is_set():
                self._lost(f"{self._store_at()} no longer answers ({type(err).__name__}: {_first_line(err)})")

    def _judge(self) -> None:
        """Timing only, no I/O: stop the process when a watched counter, or the store, has been silent too long."""
        tick = resumed = time.monotonic()
        while not self._stop.wait(self.interval / 2):
            now = time.monotonic()
            if now - tick > 2 * self.interval:  # this process itself did not run (the GIL held, the machine paused)
                resumed = now  # what the others did meanwhile is unknown: their silence counts from now
            tick = now
            answered = self._answered
            silent = now - max(answered, resumed)
            if silent > self.timeout:
                self._lost(f"{self._store_at()} has not answered for {silent:.0f} s (machine 0 died, hangs, or the "
                           f"network to it is cut; --peer_timeout {self.timeout:g})")  # fmt: skip
            for r, (value, moved) in self._seen.items():
                silent = answered - max(moved, resumed)  # as of the last round the store answered
                if (value is None or value < DONE) and silent > self.timeout:
                    self._lost(f"{self._machine(r)} sent no heartbeat for {silent:.0f} s (it stopped with an "
                               "error, died, hangs, or the network between the machines is cut; --peer_timeout "
                               f"{self.timeout:g})")  # fmt: skip

    def _store_at(self) -> str:
        return f"the run's key-value store at {self.host}:{self.port} (on machine 0)"

    def _lost(self, what: str) -> None:
        if self._lost_lock.acquire(blocking=False):  # else the other thread is saying it already
            self.on_lost(peer_lost_message(what, self.output_dir))


def exit_with(message: str) -> None:
    """Print `message` as the training application's error and end the process at once (exit 1), from any thread."""
    print(f"hnc-clip-train: error: {message}", file=sys.stderr, flush=True)
    for handler in logging.getLogger().handlers + logging.getLogger("hnc_clip").handlers:
        with contextlib.suppress(Exception):
            handler.flush()
    with contextlib.suppress(Exception):
        sys.stdout.flush()
    os._exit(1)


@contextlib.contextmanager
def watch_peers(args) -> Iterator[PeerWatch | None]:
    """Watch the run's other processes while the block runs, when they span several machines and `--peer_timeout`
    is not 0. `args`: `HncTrainingArguments` (after the process group is set up)."""
    world = args.world_size
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    host, port = os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT")
    if not args.peer_timeout or world <= local_world:
        yield None
        return
    if not (host and port):
        logger.warning("--peer_timeout: MASTER_ADDR/MASTER_PORT are not set (not launched by accelerate launch or "
                       "torchrun): a lost machine is noticed only at the process group's timeout")  # fmt: skip
        yield None
        return
    run_id = f"{os.environ.get('TORCHELASTIC_RUN_ID', 'none')}/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}"
    watch = PeerWatch(args.process_index, world, local_world, host, int(port), args.peer_timeout, args.output_dir,
                      run_id=run_id).start()  # fmt: skip
    try:
        yield watch
    except BaseException:
        watch.stop(done=False)
        raise
    watch.stop()


def shutdown_distributed() -> None:
    """Tear the process group down before the interpreter exits: left to static destruction, a gloo/NCCL worker
    thread can still be joinable and the process aborts ("terminate called without an active exception") after a
    run that succeeded (seen under `accelerate launch` with 2 gloo processes)."""
    import gc

    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
        gc.collect()  # the last references to the group (DDP wrappers in cycles) go now, not in static destruction
