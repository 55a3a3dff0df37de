"""Per-tenant instance uids (worker/child/isolation.py): the mapping and path checks (tables),
and real instances dropping to their user on every path (spare child, zygote fork,
spawn, custom runtime) with their memory limits still enforced."""

from __future__ import annotations

import json
import logging
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from shared.settings import private_dir
from tests import bootstraps
from tests.instances import make_inv, make_spec, process_gone, write_code
from tests.test_zygote import spare_ready
from worker.child import isolation
from worker.child.isolation import InstanceUser, TenantUsers, first_unreachable, may
from worker.custom import CustomInstance
from worker.forking import Zygote
from worker.instance import Instance
from worker.limits import detect_worker_group
from worker.spares import WORKDIR_ROOT_PREFIX, make_workdir, sweep_stale_workdirs

ROOT = Path(__file__).resolve().parent.parent
BASE = 230000  # apart from the stacks' 100000 + n, so no test process shares a uid by chance
root_only = pytest.mark.skipif(os.geteuid() != 0, reason="changing uids needs root")
needs_cgroup = pytest.mark.skipif(
    detect_worker_group() is None, reason="no writable cgroup v1 memory controller here"
)


@pytest.mark.parametrize(
    ("base", "privileged", "number", "expected"),
    [
        (100000, True, 7, InstanceUser(100007, 100007)),
        (100000, True, 0, InstanceUser(100000, 100000)),  # from a dispatcher without numbers
        (100000, False, 7, None),  # not root: the worker's own uid
        (0, True, 7, None),  # base 0: isolation turned off
        (2**32 - 3, True, 1, InstanceUser(2**32 - 2, 2**32 - 2)),
    ],
)
def test_tenant_users(
    base: int, privileged: bool, number: int, expected: InstanceUser | None
) -> None:
    assert TenantUsers(base, privileged=privileged).user(number) == expected


@pytest.mark.parametrize("number", [-1, 2**32])
def test_a_number_outside_the_uid_range_is_refused(number: int) -> None:
    with pytest.raises(ValueError, match="outside the instance uid range"):
        TenantUsers(100000, privileged=True).user(number)


def test_a_negative_base_is_refused() -> None:
    with pytest.raises(ValueError, match="PYFC_INSTANCE_UID_BASE"):
        TenantUsers(-1, privileged=True)


@pytest.mark.parametrize(
    ("id_map", "first", "count", "expected"),
    [
        ("         0          0 4294967295\n", 100000, 10000, True),  # the initial namespace
        ("0 1000 1\n1 100000 65536\n", 100000, 10000, False),  # rootless: 0..65536 only
        ("0 1000 1\n1 100000 65536\n", 10000, 10000, True),
        ("0 0 1\n100000 200000 5000\n", 100000, 10000, False),  # too few
        ("", 100000, 1, False),
    ],
)
def test_mapped(id_map: str, first: int, count: int, expected: bool) -> None:
    assert isolation.mapped(id_map, first, count) is expected


def fake_stat(mode: int, uid: int = 0, gid: int = 0) -> os.stat_result:
    return os.stat_result((mode, 0, 0, 1, uid, gid, 0, 0, 0, 0))


DIR, FILE = stat.S_IFDIR, stat.S_IFREG
USER = InstanceUser(100005, 100005)


@pytest.mark.parametrize(
    ("st", "want", "allowed"),
    [
        (fake_stat(DIR | 0o711), 1, True),
        (fake_stat(DIR | 0o711), 5, False),  # passable, not listable
        (fake_stat(DIR | 0o700), 1, False),
        (fake_stat(DIR | 0o700, uid=100005), 5, True),  # its own
        (fake_stat(DIR | 0o750, gid=100005), 5, True),  # its group
        (fake_stat(DIR | 0o705, gid=100005), 5, False),  # group bits win over other's
        (fake_stat(FILE | 0o644), 4, True),
        (fake_stat(FILE | 0o600), 4, False),
    ],
)
def test_may(st: os.stat_result, want: int, allowed: bool) -> None:
    assert may(st, USER, want) is allowed


@pytest.mark.parametrize(
    ("modes", "read", "blocker"),
    [
        ({"/": 0o755, "/root": 0o700, "/root/py": 0o755}, True, "/root"),
        ({"/": 0o755, "/root": 0o701, "/root/py": 0o755}, True, None),
        ({"/": 0o755, "/root": 0o701, "/root/py": 0o711}, True, "/root/py"),
        ({"/": 0o755, "/root": 0o701, "/root/py": 0o711}, False, None),  # passing through
    ],
)
def test_first_unreachable(modes: dict[str, int], read: bool, blocker: str | None) -> None:
    stats = {path: fake_stat(DIR | mode) for path, mode in modes.items()}
    assert first_unreachable("/root/py", USER, read, stats.__getitem__) == blocker


def test_a_worker_that_is_not_root_warns_once_and_is_not_dumpable(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    dumpable: list[bool] = []
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setattr(isolation, "set_dumpable", dumpable.append)
    with caplog.at_level(logging.WARNING, logger="pyfc.worker.child.isolation"):
        users = isolation.for_this_worker(100000, sys.executable, [])
    assert not users.enabled and users.user(3) is None
    assert dumpable == [False]
    (record,) = caplog.records
    assert "tenant isolation is off (the worker runs as uid 1000)" in record.getMessage()


def test_a_root_worker_refuses_what_instance_uids_cannot_reach(tmp_path: Path) -> None:
    closed = tmp_path / "closed"
    closed.mkdir(mode=0o700)
    (closed / "inner").mkdir()
    if os.geteuid() != 0:
        pytest.skip("the check runs for root workers only")
    with pytest.raises(ValueError, match=r"cannot reach .*inner: .* is closed to other users"):
        isolation.for_this_worker(100000, sys.executable, [closed / "inner"])


# --- real instances -----------------------------------------------------------------------

WHOAMI = """
import json, os

def init(context):
    with open(os.path.join(os.environ["HOME"], "from-init"), "w") as f:
        f.write("init ran")

def status(name):
    with open("/proc/self/status") as f:
        return next(line.split()[1] for line in f if line.startswith(name + ":"))

def handler(event, context):
    home = os.environ["HOME"]
    workdir = os.path.dirname(home)
    with open(os.path.join(os.environ["TMPDIR"], "t"), "w") as f:
        f.write("tmp ok")
    try:
        os.listdir(os.path.dirname(workdir))
        listed = True
    except PermissionError:
        listed = False
    if event == b"hog":
        block = bytearray(400 * 1024 * 1024)
        for i in range(0, len(block), 4096):
            block[i] = 1
    with open(os.path.join(home, "from-init")) as f:
        from_init = f.read()
    shared = f"/tmp/pyfc-umask-{os.getpid()}"  # /tmp is the host's, other tenants' too
    with open(shared, "w") as f:
        f.write("mine")
    shared_mode = os.stat(shared).st_mode & 0o777
    os.unlink(shared)
    return {
        "shared_tmp_mode": shared_mode,
        "ids": [os.getuid(), os.geteuid(), os.getgid(), os.getegid()],
        "groups": os.getgroups(),
        "no_new_privs": status("NoNewPrivs"),
        "home": home,
        "from_init": from_init,
        "workdir_root_listed": listed,
        "own_environ": len(open("/proc/self/environ", "rb").read()) > 0,
        "ppid": os.getppid(),
    }
"""


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory instance uids can reach (pytest's tmp_path is under a 0700 one)."""
    path = Path(tempfile.mkdtemp(prefix="pyfc-isolation-test-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
async def zygote() -> AsyncIterator[Zygote]:
    zygote = Zygote()
    yield zygote
    await zygote.close()


@pytest.fixture
async def started() -> AsyncIterator[list[Instance | CustomInstance]]:
    instances: list[Instance | CustomInstance] = []
    yield instances
    for instance in instances:
        await instance.stop(grace=0.5)
        assert process_gone(instance.pid)


def check_dropped(seen: dict[str, Any], uid: int) -> None:
    assert seen["ids"] == [uid] * 4
    assert seen["groups"] in ([], [uid])
    # umask 077: what it leaves in the host's /tmp or /dev/shm no other tenant reads.
    assert seen["shared_tmp_mode"] == 0o600
    assert seen["no_new_privs"] == "1"
    assert seen["from_init"] == "init ran"
    assert not seen["workdir_root_listed"]
    assert seen["own_environ"]  # dumpable again: its own /proc entries are its own
    home = Path(seen["home"])
    for path in (home.parent, home, home.parent / "tmp"):
        st = path.stat()
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (uid, uid, 0o700), path
    assert stat.S_IMODE(home.parent.parent.stat().st_mode) == 0o711


@root_only
@pytest.mark.parametrize("how", ["zygote-fork", "spare", "spawn"])
async def test_python_instances_run_as_their_tenant(
    open_dir: Path, zygote: Zygote, started: list[Instance | CustomInstance], how: str
) -> None:
    users = TenantUsers(BASE, privileged=True)
    env = {"PYTHONHASHSEED": "1"} if how == "spawn" else {}
    spec = make_spec(tenant_number=41, initializer="index.init", environment=env)
    code = write_code(open_dir, WHOAMI)
    spare = await spare_ready(zygote) if how == "spare" else None
    instance = await Instance.start(spec, code, zygote=zygote, users=users)
    started.append(instance)
    assert spare is None or instance.pid == spare
    seen = json.loads((await instance.invoke(make_inv(b""))).body)
    check_dropped(seen, BASE + 41)
    assert (seen["ppid"] == os.getpid()) is (how == "spawn")


@root_only
@needs_cgroup
@pytest.mark.parametrize("how", ["spare", "spawn"])
async def test_memory_size_still_holds_after_the_drop(
    open_dir: Path, zygote: Zygote, started: list[Instance | CustomInstance], how: str
) -> None:
    users = TenantUsers(BASE, privileged=True)
    env = {"PYTHONHASHSEED": "1"} if how == "spawn" else {}
    spec = make_spec(tenant_number=42, initializer="index.init", memory_size=128, environment=env)
    code = write_code(open_dir, WHOAMI)
    spare = await spare_ready(zygote) if how == "spare" else None
    instance = await Instance.start(spec, code, zygote=zygote, users=users)
    started.append(instance)
    assert spare is None or instance.pid == spare
    outcome = await instance.invoke(make_inv(b"hog"))
    assert json.loads(outcome.body)["errorType"] == "OutOfMemory", outcome.body


THREADS = """
import json, resource, threading


def handler(event, context):
    stop, threads, error = threading.Event(), [], ""
    try:
        for _ in range(int(event)):
            thread = threading.Thread(target=stop.wait)
            thread.start()
            threads.append(thread)
    except RuntimeError as e:  # "can't start new thread": the kernel said EAGAIN
        error = str(e)
    stop.set()
    for thread in threads:
        thread.join()
    limit = list(resource.getrlimit(resource.RLIMIT_NPROC))
    return json.dumps({"limit": limit, "started": len(threads), "error": error})
"""


@root_only
@pytest.mark.parametrize("how", ["zygote-fork", "spare", "spawn"])
async def test_a_tenant_cannot_take_the_hosts_pids(
    open_dir: Path, zygote: Zygote, started: list[Instance | CustomInstance], how: str
) -> None:
    """RLIMIT_NPROC counts a uid's processes and threads host-wide: a tenant past its
    limit cannot start more, and nothing else suffers (another tenant, its own instance)."""
    env = {"PYTHONHASHSEED": "1"} if how == "spawn" else {}
    code = write_code(open_dir, THREADS)
    spare = await spare_ready(zygote) if how == "spare" else None
    capped = await Instance.start(
        make_spec(tenant_number=44, environment=env),
        code,
        zygote=zygote,
        users=TenantUsers(BASE, privileged=True, max_procs=40),
    )
    started.append(capped)
    assert spare is None or capped.pid == spare
    seen = json.loads((await capped.invoke(make_inv(b"200"))).body)
    assert seen["limit"] == [40, 40]
    assert seen["started"] < 40 and "thread" in seen["error"], seen
    # The instance itself goes on, and a tenant without the cap is not held to it.
    assert json.loads((await capped.invoke(make_inv(b"5"))).body)["started"] == 5
    free = await Instance.start(
        make_spec(tenant_number=45, environment=env),
        code,
        zygote=zygote,
        users=TenantUsers(BASE, privileged=True),
    )
    started.append(free)
    seen = json.loads((await free.invoke(make_inv(b"200"))).body)
    assert seen["started"] == 200 and not seen["error"], seen


def test_a_negative_process_limit_is_refused() -> None:
    with pytest.raises(ValueError, match="PYFC_INSTANCE_MAX_PROCS"):
        TenantUsers(BASE, privileged=True, max_procs=-1)


@root_only
async def test_a_custom_runtime_runs_as_its_tenant(
    open_dir: Path, started: list[Instance | CustomInstance]
) -> None:
    users = TenantUsers(BASE, privileged=True)
    spec = make_spec(runtime="custom", tenant_number=43, memory_size=128)
    code = bootstraps.unpacked(open_dir, bootstraps.members(bootstraps.WHOAMI))
    instance = await CustomInstance.start(spec, code, users=users)
    started.append(instance)
    seen = json.loads((await instance.invoke(make_inv(b"who"))).body)
    uid = BASE + 43
    assert seen["ids"] == [uid] * 4 and seen["groups"] in ([], [uid])
    assert "NoNewPrivs:\t1" in seen["status"]
    assert (Path(seen["home"]) / "probe").stat().st_uid == uid
    # Started as ./bootstrap from its code dir: no digest in a cmdline others can read.
    assert str(code).encode() not in Path(f"/proc/{instance.pid}/cmdline").read_bytes()
    if detect_worker_group() is not None:  # joined before the drop: the limit holds
        hog = await instance.invoke(make_inv(b"hog"))
        assert json.loads(hog.body)["errorType"] == "OutOfMemory", hog.body


@root_only
def test_the_sweep_removes_workdirs_instances_locked_up(tmp_path: Path) -> None:
    """A dead worker's root holding a workdir of another uid, with a file and a directory
    its instance made unreadable and unwritable: the next worker removes it all."""
    dead = tmp_path / f"{WORKDIR_ROOT_PREFIX}999999999"
    dead.mkdir()
    locked = dead / "pyfc-i-x" / "home" / "locked"
    locked.mkdir(parents=True)
    (locked / "file").write_text("x")
    for path in (locked / "file", locked, locked.parent, locked.parent.parent):
        os.chown(path, BASE + 1, BASE + 1)
    locked.chmod(0)
    assert sweep_stale_workdirs(tmp_path) == 1
    assert not dead.exists()


@root_only
def test_workdirs_are_made_for_their_user(tmp_path: Path) -> None:
    workdir = make_workdir("i-test", InstanceUser(BASE + 2, BASE + 2))
    try:
        for path in (workdir, workdir / "home", workdir / "tmp"):
            st = path.stat()
            assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (BASE + 2, 0o700)
    finally:
        shutil.rmtree(workdir)


NON_ROOT_PROBE = """
import os

def handler(event, context):
    out = {"uid": os.getuid()}
    for name, pid in (("zygote", os.getppid()), ("worker", int(event))):
        try:
            open(f"/proc/{pid}/environ", "rb").read()
            out[name] = "read"
        except PermissionError:
            out[name] = "denied"
    return out
"""

# Run as nobody: a worker's start (for_this_worker) and one instance forked by its zygote.
NON_ROOT_WORKER = """
import asyncio, json, os, sys
sys.path.insert(0, sys.argv[1])
from tests.instances import make_inv, make_spec
from worker.child import isolation
from worker.forking import Zygote
from worker.instance import Instance

async def main():
    users = isolation.for_this_worker(100000, sys.executable, [])
    zygote = Zygote()
    try:
        instance = await Instance.start(
            make_spec(tenant_number=5), sys.argv[2], zygote=zygote, users=users,
            memory_cgroups=False,
        )
        outcome = await instance.invoke(make_inv(str(os.getpid()).encode()))
        print(json.dumps(json.loads(outcome.body)))
        await instance.stop(0.5)
    finally:
        await zygote.close()

asyncio.run(main())
"""


@root_only
def test_a_worker_that_is_not_root_hides_itself_from_its_instances(open_dir: Path) -> None:
    """Run as nobody, a worker's instances keep its uid but cannot read the environment of
    the worker or the zygote (both non-dumpable), and the worker says isolation is off."""
    code = write_code(open_dir, NON_ROOT_PROBE)
    script = open_dir / "worker.py"
    script.write_text(NON_ROOT_WORKER)
    done = subprocess.run(
        [sys.executable, str(script), str(ROOT), str(code)],
        user=65534,
        group=65534,
        extra_groups=[],
        cwd=open_dir,
        env={"PATH": os.environ["PATH"]},
        capture_output=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr.decode()
    seen = json.loads(done.stdout.splitlines()[-1])
    assert seen == {"zygote": "denied", "worker": "denied", "uid": 65534}
    assert b"tenant isolation is off (the worker runs as uid 65534)" in done.stderr


def test_the_data_dir_is_made_private_but_a_shared_one_is_left_alone(tmp_path: Path) -> None:
    fresh, loose, shared = tmp_path / "a" / "data", tmp_path / "loose", tmp_path / "shared"
    loose.mkdir(mode=0o755)
    shared.mkdir()
    shared.chmod(0o1777)  # like /tmp: never a data dir, not ours to close
    for path in (fresh, loose, shared):
        private_dir(path)
    modes = [stat.S_IMODE(p.stat().st_mode) for p in (fresh, loose, shared)]
    assert modes == [0o700, 0o700, 0o1777]


def test_hidden_dirs_are_the_existing_directories_once(tmp_path: Path) -> None:
    from worker.child.isolation import hidden_dirs

    real = tmp_path / "run-pg"
    real.mkdir()
    (tmp_path / "var-run-pg").symlink_to(real)
    (tmp_path / "a-file").write_text("")
    paths = [str(real), str(tmp_path / "var-run-pg"), str(tmp_path / "missing"), " "]
    paths.append(str(tmp_path / "a-file"))
    assert hidden_dirs(paths) == (str(real),)
