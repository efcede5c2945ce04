"""Two "nodes" — two network namespaces joined by a veth pair (or, where namespaces are not
permitted, two loopback addresses) — train one model with `torchrun --nnodes 2` and c10d
rendezvous; one node's worker is killed mid-run, torchrun's elastic restart brings the group
back, and the run resumes from its last checkpoint and finishes."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path

import psutil
import pytest
import yaml
from test_pretrain import make_data, tiny_recipe

from forgeml.launch.torchrun import torchrun_argv

ROOT = Path(__file__).resolve().parents[1]
MAX_STEPS, CHECKPOINT_EVERY = 120, 10
STEP_LINE = re.compile(r"step (\d+)/(\d+)")


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=20)


class Network:
    """Where each node runs and how it is reached: a command prefix, the rendezvous address
    (node A's), and each node's own address and the interface its gloo traffic uses."""

    def __init__(self) -> None:
        tag = uuid.uuid4().hex[:6]
        self.ns = [f"fml-a-{tag}", f"fml-b-{tag}"]
        self.veth = [f"fa{tag}", f"fb{tag}"]
        self.kind, self.created = "loopback", False
        self.prefix: list[list[str]] = [[], []]
        self.ifname, self.addr = ["lo", "lo"], ["127.0.0.2", "127.0.0.3"]

    def __enter__(self) -> Network:
        try:
            _ip("netns", "add", self.ns[0])
            self.created = True
            _ip("netns", "add", self.ns[1])
            _ip("link", "add", self.veth[0], "type", "veth", "peer", "name", self.veth[1])
            for i, addr in enumerate(("10.231.0.1/24", "10.231.0.2/24")):
                _ip("link", "set", self.veth[i], "netns", self.ns[i])
                _ip("-n", self.ns[i], "addr", "add", addr, "dev", self.veth[i])
                _ip("-n", self.ns[i], "link", "set", self.veth[i], "up")
                _ip("-n", self.ns[i], "link", "set", "lo", "up")
        except (subprocess.CalledProcessError, FileNotFoundError, PermissionError) as exc:
            self.__exit__()
            reason = getattr(exc, "stderr", b"") or str(exc)
            print(f"network namespaces unavailable ({reason!r}); using loopback addresses")
            return self
        # `ip netns exec` mounts /etc/netns/NAME/* over /etc: names for both addresses and no
        # DNS server, so reverse lookups of the peers answer at once instead of timing out.
        for ns in self.ns:
            etc = Path("/etc/netns") / ns
            etc.mkdir(parents=True, exist_ok=True)
            (etc / "hosts").write_text(
                "127.0.0.1 localhost\n10.231.0.1 fml-node-a\n10.231.0.2 fml-node-b\n"
            )
            (etc / "resolv.conf").write_text("")
        self.kind = "netns"
        self.prefix = [["ip", "netns", "exec", ns] for ns in self.ns]
        self.ifname, self.addr = list(self.veth), ["10.231.0.1", "10.231.0.2"]
        return self

    def __exit__(self, *exc: object) -> None:
        if not self.created:
            return
        for ns in self.ns:  # deleting a namespace deletes the veth end inside it (and its peer)
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=20)
            shutil.rmtree(Path("/etc/netns") / ns, ignore_errors=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _steps(log: str) -> list[int]:
    return [int(m.group(1)) for m in STEP_LINE.finditer(log)]


def _kill_groups(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(timeout=30)


@pytest.mark.slow
def test_two_nodes_survive_a_killed_worker_and_resume(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root for network namespaces (ip netns) and veth pairs")
    train, held = make_data(tmp_path, n_train=8000)
    recipe = tiny_recipe(
        max_steps=MAX_STEPS, micro_batch_size=2, grad_accum_steps=1,
        checkpoint_every=CHECKPOINT_EVERY, keep_checkpoints=3, log_every=1, eval_every=0,
    )  # fmt: skip
    recipe_path = tmp_path / "recipe.yaml"
    recipe_path.write_text(yaml.safe_dump(recipe.model_dump(mode="json")))
    out = tmp_path / "run"
    port = _free_port()
    program = ["-m", "forgeml.train.pretrain", "--recipe", str(recipe_path),
               "--train-shards", str(train), "--out", str(out), "--auto-resume"]  # fmt: skip

    with Network() as net:
        procs, logs = [], [tmp_path / "node-a.log", tmp_path / "node-b.log"]
        try:
            for node in (0, 1):
                argv = torchrun_argv(
                    program, nproc_per_node=1, nnodes=2, rdzv_endpoint=f"{net.addr[0]}:{port}",
                    rdzv_id="two-nodes", max_restarts=1,
                )  # fmt: skip
                # Node A hosts the c10d store, and each node names its own address (rank 0's is
                # where the workers meet): in a namespace no hostname resolves to them.
                argv[3:3] = [f"--rdzv-conf=is_host={int(node == 0)}",
                             f"--local-addr={net.addr[node]}"]  # fmt: skip
                # Each rendezvous round's workers meet in a fresh store (hosted by rank 0)
                # rather than in the agents' long-lived one: after a restart a node whose
                # agent restarted for a failure and one that restarted for the membership
                # change count restarts differently, and could read the last round's keys.
                env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": net.ifname[node],
                       "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}  # fmt: skip
                procs.append(subprocess.Popen(
                    net.prefix[node] + argv, cwd=ROOT, env=env, start_new_session=True,
                    stdout=logs[node].open("w"), stderr=subprocess.STDOUT,
                ))  # fmt: skip

            # Once rank 0 has logged a step or two past a checkpoint (so the restarted group
            # visibly goes back to it), SIGKILL node B's training process; its agent stays.
            deadline = time.monotonic() + 180
            while True:
                assert all(p.poll() is None for p in procs), [p.read_text() for p in logs]
                assert time.monotonic() < deadline, "no checkpoint within 180 s"
                saved = max((int(p.name.split("_")[1]) for p in out.glob("checkpoints/step_*")),
                            default=0)  # fmt: skip
                logged = max(_steps(logs[0].read_text()) + _steps(logs[1].read_text()), default=0)
                if saved and saved + 2 <= logged <= saved + CHECKPOINT_EVERY - 3:
                    break
                time.sleep(0.02)
            (worker,) = psutil.Process(procs[1].pid).children()
            worker.send_signal(signal.SIGKILL)

            for p in procs:
                p.wait(timeout=240)
        finally:
            _kill_groups(procs)
        texts = [p.read_text() for p in logs]
    assert [p.returncode for p in procs] == [0, 0], "\n\n".join(t[-3000:] for t in texts)

    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == MAX_STEPS and summary["world_size"] == 2
    assert saved < MAX_STEPS, "the run ended before the kill: make it longer"
    # Rank 0 logs every step. The first attempt started at step 1; the restarted group did not
    # start over but went back to the step after the checkpoint, and ran to the end.
    steps = [_steps(t) for t in texts]
    assert sum(s.count(1) for s in steps) == 1, steps
    final = next(s for s in steps if s and s[-1] == MAX_STEPS)
    # the restarted group's first step: after the drop in this node's log, or its first line
    # when rank 0 moved to this node in the restart
    drops = [i for i in range(1, len(final)) if final[i] <= final[i - 1]]
    resumed_at = final[drops[-1]] if drops else final[0]
    assert resumed_at > 1 and (resumed_at - 1) % CHECKPOINT_EVERY == 0, steps
    assert resumed_at == saved + 1, (resumed_at, saved)  # no later checkpoint before the kill
    assert final[-(MAX_STEPS - resumed_at + 1) :] == list(range(resumed_at, MAX_STEPS + 1))
    print(f"{net.kind}: killed after checkpoint {saved}, resumed at step {resumed_at}")
