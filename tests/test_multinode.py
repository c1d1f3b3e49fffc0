"""More than one machine (`accelerate_configs/cpu_2node.yaml`, docs/multi_node.md). Two `accelerate launch
--num_machines 2 --machine_rank {0,1}` on this host, one gloo process each, stand in for two machines that share
the output folder (as on NFS): they train to the weights of one machine's two processes, only the first process
writes the folder, and when one machine dies or hangs the other stops with a message within a bounded time.
`hnc_clip.peers` is tested alone at the end."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from hnc_clip.errors import OutputDirInUseError
from hnc_clip.output_dir import COMPLETE_MARKER, OutputDirLock, claim_output_dir
from hnc_clip.peers import DONE, PeerWatch, is_peer_lost, watch_peers

from .helpers import RENDEZVOUS_ERRORS, REPO, TRAIN_SAMPLE, free_port

ACCELERATE = shutil.which("accelerate", path=os.path.dirname(sys.executable)) or "accelerate"
# One thread per process in both setups: accelerate gives a lone CPU process every core, and matrix products
# summed by another thread count differ in the last bits (one machine's two processes get one thread each).
ENV = {**os.environ, "PYTHONPATH": str(REPO), "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}


def train_flags(tiny_clip_dir, image_dir, out, cache, *extra) -> list[str]:
    return ["--model_name_or_path", str(tiny_clip_dir), "--train_file", str(TRAIN_SAMPLE), "--image_dir",
            str(image_dir), "--output_dir", str(out), "--cache_dir", str(cache), "--do_train",
            "--per_device_train_batch_size", "4", "--use_cpu", "--report_to", "none", "--logging_steps", "1",
            "--max_steps", "4", "--save_strategy", "steps", "--save_steps", "2", "--seed", "7", *extra]  # fmt: skip


def start_machine(rank: int, port: str, log: Path, script: str, *args: str) -> subprocess.Popen:
    """Machine `rank` of two: its `accelerate launch` (the torchrun agent) and its process, in a session of their own
    so that the test can end both."""
    cmd = [ACCELERATE, "launch", "--config_file", "accelerate_configs/cpu_2node.yaml", "--machine_rank", str(rank),
           "--main_process_ip", "127.0.0.1", "--main_process_port", port, script, *args]  # fmt: skip
    with open(log, "w") as f:
        return subprocess.Popen(cmd, cwd=REPO, env=ENV, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)


def end(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)  # a stopped process dies of SIGKILL too
        proc.wait()


def two_machines(tmp_path: Path, scripts, per_machine_args, timeout: float = 240) -> list[str]:
    """Both machines to the end (retried once on a new port when the local rendezvous failed); their logs."""
    for attempt in range(2):
        port = free_port()
        logs = [tmp_path / f"machine{r}.log" for r in (0, 1)]
        procs = [start_machine(r, port, logs[r], scripts[r], *per_machine_args[r]) for r in (0, 1)]
        try:
            codes = [p.wait(timeout=timeout) for p in procs]
        finally:
            for p in procs:
                end(p)
        texts = [log.read_text() for log in logs]
        if codes == [0, 0] or attempt == 1 or not any(e in t for t in texts for e in RENDEZVOUS_ERRORS):
            break
    assert codes == [0, 0], "\n".join(t[-3000:] for t in texts)
    return texts


def one_machine(tmp_path: Path, *args: str) -> None:
    """The reference: one machine, two processes (`accelerate_configs/cpu_2proc.yaml`)."""
    for attempt in range(2):
        cmd = [ACCELERATE, "launch", "--config_file", "accelerate_configs/cpu_2proc.yaml", "--main_process_port",
               free_port(), "run_hnc_clip.py", *args]  # fmt: skip
        proc = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=240)
        if proc.returncode == 0 or attempt == 1 or not any(e in proc.stderr for e in RENDEZVOUS_ERRORS):
            break
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]


def files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, _tiny_clip_dir, sample_image_dir):
    """The same training (4 steps, checkpoints at 2 and 4) on one machine with two processes, and on two machines of
    one process each that share the output folder and the data cache (each machine's first process converts the data:
    `main_process_first` is per machine, and the conversion that finishes first is published). Every process of the
    two machines records what it changes in the folder (`tests/dist_audit.py`)."""
    tmp = tmp_path_factory.mktemp("multinode")
    one, shared = tmp / "one_machine", tmp / "shared_out"
    one_machine(tmp, *train_flags(_tiny_clip_dir, sample_image_dir, one, tmp / "cache_one"))
    flags = train_flags(_tiny_clip_dir, sample_image_dir, shared, tmp / "shared_cache")
    logs = two_machines(tmp, ["tests/dist_audit.py"] * 2, [[str(tmp / f"audit{r}.jsonl"), *flags] for r in (0, 1)])
    audits = [[json.loads(line) for line in (tmp / f"audit{r}.jsonl").read_text().splitlines()] for r in (0, 1)]
    return SimpleNamespace(one=one, shared=shared, audits=audits, logs=logs)


def test_two_machines_train_to_the_weights_of_one_machine_bitwise(runs):
    """Same seed and flags: the final model, every checkpoint's weights and optimizer state, and the logged losses
    are bitwise those of one machine's two processes (one thread each: see ENV)."""
    for name in ("model.safetensors", "checkpoint-2/model.safetensors", "checkpoint-4/model.safetensors"):
        a, b = load_file(runs.one / name), load_file(runs.shared / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    a, b = (torch.load(d / "checkpoint-4" / "optimizer.pt", weights_only=True) for d in (runs.one, runs.shared))
    assert all(torch.equal(x, y) for s, t in zip(a["state"].values(), b["state"].values()) for x, y in
               zip(s.values(), t.values()) if torch.is_tensor(x))  # fmt: skip
    losses = [[h["loss"] for h in json.loads((d / "trainer_state.json").read_text())["log_history"] if "loss" in h]
              for d in (runs.one, runs.shared)]  # fmt: skip
    assert len(losses[0]) == 4 and losses[0] == losses[1]


def test_the_shared_folder_is_written_once_by_the_first_process(runs):
    """The shared folder holds what one machine's run leaves (each checkpoint complete, with both processes' RNG
    states), and machine 1 wrote nothing in it but its own RNG state: not the model, card, results, trainer state,
    checkpoint files or `.complete` markers, and no lock (it neither claimed the folder nor was refused it)."""
    assert files(runs.shared) == files(runs.one)
    for step in (2, 4):
        in_checkpoint = set(os.listdir(runs.shared / f"checkpoint-{step}"))
        assert {COMPLETE_MARKER, "rng_state_0.pth", "rng_state_1.pth"} <= in_checkpoint
    by_machine_1 = {(e["event"], e["path"]) for e in runs.audits[1]}
    assert by_machine_1 == {("os.mkdir", "checkpoint-2"), ("os.mkdir", "checkpoint-4"),  # exist_ok: already there
                            ("open", "checkpoint-2/rng_state_1.pth"), ("open", "checkpoint-4/rng_state_1.pth")}
    written_by_0 = {e["path"] for e in runs.audits[0] if e["event"] == "open"}
    assert {".hnc-clip.lock", "README.md", "all_results.json", "trainer_state.json", "train_results.json",
            ".final-model.incomplete/model.safetensors", "checkpoint-2/optimizer.pt", "checkpoint-4/.complete.tmp",
            "checkpoint-2/rng_state_0.pth"} <= written_by_0  # fmt: skip
    results = json.loads((runs.shared / "all_results.json").read_text())
    assert results["train_samples"] == 594 and "machine_defaults" in results  # metrics and settings, written once


@pytest.mark.parametrize("dies, how", [(1, "SIGKILL"), (0, "SIGSTOP")], ids=["machine1_killed", "machine0_hangs"])
def test_when_a_machine_dies_or_hangs_the_other_stops_with_a_message(tmp_path, tiny_clip_dir, sample_image_dir,
                                                                      dies, how):
    """At the start of step 2 (checkpoint-2 saved) one machine's launcher and process get SIGKILL (a crash: the
    kernel closes its sockets, the survivor's next collective fails at once) or SIGSTOP (a machine that hangs or is
    cut off: nothing is closed, gloo alone would wait 30 minutes). The other machine exits 1 within 60 s, with one
    message naming the loss and the resume, not a trace. Each machine has a data cache of its own here."""
    survives = 1 - dies
    port, logs = free_port(), [tmp_path / f"machine{r}.log" for r in (0, 1)]
    procs = []
    try:
        for r in (0, 1):
            flags = train_flags(tiny_clip_dir, sample_image_dir, tmp_path / "out", tmp_path / f"cache{r}",
                                "--max_steps", "40", "--peer_timeout", "8")  # fmt: skip
            script = ["tests/dist_die.py", how, "2"] if r == dies else ["run_hnc_clip.py"]
            procs.append(start_machine(r, port, logs[r], *script, *flags))
        deadline = time.monotonic() + 180
        while "dist_die:" not in logs[dies].read_text():
            assert procs[survives].poll() is None and time.monotonic() < deadline, logs[survives].read_text()[-3000:]
            time.sleep(0.2)
        died = time.monotonic()
        try:
            code = procs[survives].wait(timeout=60)
        except subprocess.TimeoutExpired:
            pytest.fail(f"machine {survives} still runs 60 s after machine {dies} got {how}")
        took = time.monotonic() - died
    finally:
        for p in procs:
            end(p)
        # torchrun starts each process in a session of its own: the stopped one is ended by its id
        worker = re.search(r"dist_die: \w+ to the launcher \d+ and to (\d+)", logs[dies].read_text())
        if worker:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(worker.group(1)), signal.SIGKILL)
    text = logs[survives].read_text()
    assert code == 1, text[-3000:]
    message = re.search(r"hnc-clip-train: error: lost a peer of this run: (.*)", text)
    assert message, text[-3000:]
    assert "--resume_from_checkpoint last: it continues from " + str(tmp_path / "out" / "checkpoint-2") in text
    if how == "SIGSTOP":  # noticed by the heartbeat: machine 0 holds the store
        assert "key-value store at 127.0.0.1" in message.group(1) and "--peer_timeout 8" in message.group(1)
    else:
        assert "a collective failed" in message.group(1)
    assert f"[rank{survives}]: Traceback" not in text  # the message instead of a trace
    print(f"machine {survives} stopped {took:.1f} s after machine {dies} got {how}")


# -- hnc_clip.peers alone -----------------------------------------------------------------------------------------


@pytest.fixture
def store():
    """A c10d store served in this process, as the launcher of machine 0 serves it."""
    server = torch.distributed.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
    yield server


def watch(store, lost: list, rank: int = 0, timeout: float = 1.0) -> PeerWatch:
    return PeerWatch(rank, 2, 1, "127.0.0.1", store.port, timeout, "/nowhere", on_lost=lost.append).start()


def beat(store, watcher: PeerWatch, rank: int, seconds: float) -> None:
    for _ in range(int(seconds / 0.1)):
        store.add(watcher._key(rank), 1)
        time.sleep(0.1)


def test_a_peer_is_lost_when_its_heartbeat_stops_and_not_before(store):
    lost = []
    watcher = watch(store, lost)
    try:
        beat(store, watcher, 1, 2.0)  # two timeouts of beating
        assert lost == []
        stopped = time.monotonic()
        while not lost and time.monotonic() - stopped < 5:
            time.sleep(0.05)
        assert lost and 0.4 < time.monotonic() - stopped < 2.5
        assert "process 1 (machine 1 of 2) sent no heartbeat" in lost[0] and "--peer_timeout 1" in lost[0]
        assert "--resume_from_checkpoint last" in lost[0]
    finally:
        watcher.stop()
    assert len(lost) == 1  # said once


def test_a_peer_that_left_the_run_is_not_lost(store):
    lost = []
    watcher = watch(store, lost)
    try:
        beat(store, watcher, 1, 0.5)
        store.add(watcher._key(1), DONE)  # what `stop` adds on process 1
        time.sleep(1.8)
        assert lost == []
    finally:
        watcher.stop()


def test_a_store_that_goes_away_is_a_lost_machine_0():
    lost = []
    server = torch.distributed.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
    watcher = watch(server, lost, rank=1)
    try:
        beat(server, watcher, 0, 0.5)
        del server  # machine 0's launcher is gone
        deadline = time.monotonic() + 5
        while not lost and time.monotonic() < deadline:
            time.sleep(0.05)
        assert lost and "key-value store at 127.0.0.1" in lost[0]
    finally:
        watcher.stop()


def test_leaving_normally_says_so_and_leaving_with_an_error_does_not(store, monkeypatch):
    """`watch_peers` on process 1 of two machines: a normal end marks it done; an error on it alone does not (its
    peers must notice its silence: a collective they wait in may never fail by itself)."""
    for name, value in (("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", str(store.port)), ("LOCAL_WORLD_SIZE", "1")):
        monkeypatch.setenv(name, value)
    args = SimpleNamespace(world_size=2, process_index=1, peer_timeout=5, output_dir="/nowhere")
    with watch_peers(args) as watcher:
        assert watcher is not None
    assert store.add(watcher._key(1), 0) >= DONE
    store.delete_key(watcher._key(1))
    with pytest.raises(ValueError), watch_peers(args) as watcher:
        time.sleep(0.3)  # it beats
        raise ValueError("this process alone")
    time.sleep(0.3)
    assert 0 < store.add(watcher._key(1), 0) < DONE


def test_one_machine_or_peer_timeout_0_runs_no_watch(monkeypatch):
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "1")
    for local, timeout in ((2, 60), (1, 0)):
        monkeypatch.setenv("LOCAL_WORLD_SIZE", str(local))
        args = SimpleNamespace(world_size=2, process_index=0, peer_timeout=timeout, output_dir="/nowhere")
        with watch_peers(args) as watcher:
            assert watcher is None


def test_collective_errors_of_a_lost_peer_are_recognised():
    # gloo's, as raised in the survivor by test_when_a_machine_dies_or_hangs_the_other_stops_with_a_message
    gloo = RuntimeError("[/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:553] Connection closed by "
                        "peer [127.0.0.1]:1675. This is typically caused by a remote worker crashing.")  # fmt: skip
    assert is_peer_lost(gloo) and is_peer_lost(torch.distributed.DistNetworkError("store gone"))
    try:
        try:
            raise gloo
        except RuntimeError as err:
            raise ValueError("while saving") from err
    except ValueError as err:
        assert is_peer_lost(err)  # through the chain
    assert not is_peer_lost(RuntimeError("CUDA out of memory")) and not is_peer_lost(ValueError("bad flag"))


def test_save_on_each_node_into_a_shared_folder_is_refused_with_the_reason(tmp_path):
    """--save_on_each_node makes every machine's first process write the folder: on a shared one, the second finds
    the first's lock, and the message says that the holder may be this run's other machine."""
    holder = OutputDirLock(str(tmp_path)).acquire()  # machine 0's process
    args = SimpleNamespace(output_dir=str(tmp_path), should_save=True, do_train=True, overwrite_output_dir=False,
                           save_on_each_node=True)  # fmt: skip
    try:
        with pytest.raises(OutputDirInUseError, match="another machine of this run.*drop --save_on_each_node"):
            with claim_output_dir(args, resuming=False):
                pass
        args.save_on_each_node = False
        with pytest.raises(OutputDirInUseError, match="another run is writing") as err:
            with claim_output_dir(args, resuming=False):
                pass
        assert "drop --save_on_each_node" not in str(err.value)
    finally:
        holder.release()
