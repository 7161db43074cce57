"""Ray as a user's cluster runs it: a head started with `ray start --head` and a second node
with `ray start --address`, each its own process tree on localhost, and `robustag bench
--executor ray --address …` driving them from a third process. Faults: the second node is
killed while it runs a unit, with and without Ray's retries."""

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

pytest.importorskip("ray", reason="the ray extra is not installed")

RAY = str(Path(sys.executable).with_name("ray"))
# A node killed outright is declared dead after 5 missed health checks of 0.2 s (default: 15 s),
# so the rerun after a fault does not wait on it.
RAY_ENV = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", "RAY_health_check_period_ms": "200",
           "RAY_health_check_failure_threshold": "5"}

# An attack that marks which Ray node runs it (a file named after the node) and holds 4 s, once
# per worker process, so a test can kill a node while it is known to be mid-unit.
HELD_ATTACK = '''
import os, time
import ray
from robustag.attack import EmbeddingAttack

held = False

class Held(EmbeddingAttack):
    name = "held"
    summary = "no perturbation; marks its node and waits"

    def perturb(self, objective, deltas, radius):
        global held
        marks = os.environ.get("HELD_MARKS")
        if marks and not held:  # once per worker process
            held = True
            open(os.path.join(marks, ray.get_runtime_context().get_node_id()), "w").close()
            time.sleep(4)
        return {key: zero.clone() for key, zero in deltas.items()}
'''


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _start(args: list[str], env: dict) -> subprocess.Popen:
    """A `ray start --block` in a session of its own: killing its group kills that node."""
    return subprocess.Popen([RAY, "start", "--block", "--num-cpus=1", *args], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _stop(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()


def _alive_nodes(address: str, env: dict) -> list[str]:
    probe = "import ray; ray.init(address=%r, log_to_driver=False); print(*[n['NodeID'] for n in ray.nodes() if n['Alive']])"
    found = subprocess.run([sys.executable, "-c", probe % address], env=env, capture_output=True, text=True, timeout=120)
    return found.stdout.split()


def _wait_for_nodes(address: str, env: dict, count: int) -> list[str]:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        nodes = _alive_nodes(address, env)
        if len(nodes) == count:
            return nodes
        time.sleep(0.5)
    raise AssertionError(f"the Ray cluster at {address} never had {count} live nodes")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """(address, environment, head node id): a head with one CPU, its session files under a short
    private folder (Ray's socket paths are limited in length)."""
    env = {**os.environ, **RAY_ENV, "HELD_MARKS": str(tmp_path_factory.mktemp("marks"))}
    temp = tempfile.mkdtemp(prefix="rt-ray-")
    port = _free_port()
    head = _start(["--head", f"--port={port}", "--include-dashboard=false", f"--temp-dir={temp}"], env)
    address = f"127.0.0.1:{port}"
    try:
        (head_id,) = _wait_for_nodes(address, env, 1)
        yield address, env, head_id
    finally:
        _stop(head)


@pytest.fixture
def second_node(cluster):
    """A worker node joined to the head; (its process, its node id)."""
    address, env, head_id = cluster
    node = _start([f"--address={address}"], env)
    try:
        ids = _wait_for_nodes(address, env, 2)
        yield node, next(i for i in ids if i != head_id)
    finally:
        _stop(node)
        _wait_for_nodes(address, env, 1)


@pytest.fixture(scope="module")
def held_spec(tmp_path_factory, planted_path):
    folder = tmp_path_factory.mktemp("held")
    (folder / "held.py").write_text(HELD_ATTACK)
    (folder / "spec.toml").write_text(f'''name = "cluster"
datasets = ["tsv:{planted_path}"]
defenses = ["plain", "aml"]
attacks = ["fgsm", "held"]
seeds = [0, 1]
p_core = 3
[params]
epochs = 2
dim = 8
''')
    return folder


def _bench(spec_folder: Path, out: Path, env: dict, *options: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "robustag", "bench", str(spec_folder / "spec.toml"), "--out", str(out),
               "--device", "cpu", "--plugin", str(spec_folder / "held.py"), "--no-report", *options]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _cells(out: Path) -> dict:
    with sqlite3.connect(out / "results.sqlite") as db:
        return {key: (status, finished) for key, status, finished in db.execute("SELECT key, status, finished FROM cells")}


def _per_post(out: Path) -> dict:
    with sqlite3.connect(out / "results.sqlite") as db:
        rows = db.execute("SELECT cell, metric, post, value FROM post_metrics ORDER BY cell, metric, post").fetchall()
    assert len(rows) == len({(c, m, p) for c, m, p, _ in rows}), "a per-post value stored twice"
    return {(c, m, p): v for c, m, p, v in rows}


@pytest.fixture(scope="module")
def local_reference(held_spec, tmp_path_factory, cluster):
    out = tmp_path_factory.mktemp("local") / "run"
    env = {**cluster[1], "HELD_MARKS": ""}
    bench = _bench(held_spec, out, env)
    output, _ = bench.communicate(timeout=600)
    assert bench.returncode == 0, output
    return _per_post(out)


def _kill_when_busy(node: subprocess.Popen, node_id: str, bench: subprocess.Popen, marks: Path) -> None:
    """Kill the node as soon as it has started evaluating a unit's cells."""
    deadline = time.monotonic() + 300
    while not (marks / node_id).exists():
        assert bench.poll() is None and time.monotonic() < deadline, "the second node never ran a unit"
        time.sleep(0.1)
    _stop(node)


def test_a_two_node_cluster_gives_the_local_numbers_and_survives_a_node_lost_midway(
        cluster, second_node, held_spec, local_reference, tmp_path):
    """Ray's retries rerun the lost unit elsewhere: the bench finishes with every cell done and
    the local pool's numbers; models reach the driver's run folder through the object store."""
    address, env, _ = cluster
    node, node_id = second_node
    out = tmp_path / "run"
    bench = _bench(held_spec, out, env, "--executor", "ray", "--address", address)
    _kill_when_busy(node, node_id, bench, Path(env["HELD_MARKS"]))
    output, _ = bench.communicate(timeout=600)
    assert bench.returncode == 0, output
    assert {status for status, _ in _cells(out).values()} == {"done"}
    assert _per_post(out) == local_reference
    assert len(list((out / "models").glob("*.pt"))) == 4  # 2 defenses × 2 seeds, written by the driver alone


def test_units_lost_without_retries_are_failed_then_completed_by_retry_failed(
        cluster, second_node, held_spec, local_reference, tmp_path):
    address, env, _ = cluster
    node, node_id = second_node
    marks = Path(env["HELD_MARKS"])
    (marks / node_id).unlink(missing_ok=True)
    out = tmp_path / "run"
    bench = _bench(held_spec, out, env, "--executor", "ray", "--address", address, "--retries", "0")
    _kill_when_busy(node, node_id, bench, marks)
    output, _ = bench.communicate(timeout=600)
    first = _cells(out)
    failed = {key for key, (status, _) in first.items() if status == "failed"}
    assert bench.returncode == 1 and failed and "lost on the Ray cluster" in _errors(out), output
    assert {status for status, _ in first.values()} == {"done", "failed"}
    retry = _bench(held_spec, out, {**env, "HELD_MARKS": ""}, "--executor", "ray", "--address", address, "--retry-failed")
    output, _ = retry.communicate(timeout=600)
    assert retry.returncode == 0, output
    after = _cells(out)
    assert {status for status, _ in after.values()} == {"done"}
    assert {key: row for key, row in after.items() if key not in failed} == {key: row for key, row in first.items()
                                                                              if key not in failed}  # untouched
    assert _per_post(out) == local_reference


def _errors(out: Path) -> str:
    with sqlite3.connect(out / "results.sqlite") as db:
        return "\n".join(error for (error,) in db.execute("SELECT error FROM cells WHERE error IS NOT NULL"))


def test_every_node_is_checked_for_what_the_units_need_before_any_work(cluster, second_node, monkeypatch, tmp_path):
    import ray

    from robustag.errors import RobustagError
    from robustag.executors import check_nodes
    from robustag.version import __version__
    from robustag.worker import NodeNeeds, WorkerSetup

    address, env, head_id = cluster
    for name, value in RAY_ENV.items():
        monkeypatch.setenv(name, value)
    missing = tmp_path / "gone.tsv"
    needs = NodeNeeds(__version__, ((f"tsv:{missing}", "0" * 64),), (("attack", "fgsm", "a1b2c3 2.0"),))
    ray.init(address=address, log_to_driver=False)
    try:
        with pytest.raises(RobustagError) as raised:
            check_nodes(ray, needs, WorkerSetup(str(tmp_path)))
        check_nodes(ray, NodeNeeds(__version__, (), (("attack", "fgsm", None),)), WorkerSetup(str(tmp_path)))  # all there
    finally:
        ray.shutdown()
    message = str(raised.value)
    assert "\n" not in message
    for node in (head_id, second_node[1]):
        assert f"({node[:8]}): data set tsv:{missing}: file not found: {missing}" in message
        assert f"({node[:8]}): attack fgsm: its code differs from the driver's (built-in here, a1b2c3 2.0 there)" in message
