"""Network conditions without root: as the unprivileged user nobody, a run with a lossy link puts itself in
user and network namespaces of its own (netem/rootless.py), the loss acts, and nothing is left behind."""

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

import pytest

from asyncfl.netem import rootless
from tests.helpers import ROOT

NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


def interpreter_for_nobody() -> tuple[str, dict] | None:
    """A Python nobody may run with this environment's packages: the venv's own if nobody can reach it,
    else the system's Python of the same version with the venv's packages on PYTHONPATH (the venv's
    interpreter may live under /root, which only root may enter)."""
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/tmp",  # a user's PATH: no /usr/sbin
           "PYTHONPATH": f"{ROOT / 'src'}:{sysconfig.get_paths()['purelib']}"}
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    for candidate in (sys.executable, shutil.which(version, path="/usr/local/bin:/usr/bin:/bin") or ""):
        # Probed inside a user namespace too: there the host's root-owned folders are anyone's
        if candidate and subprocess.run([*NOBODY, *rootless.UNSHARE, candidate, "-c", "import torch, asyncfl"],
                                        env=env, capture_output=True, timeout=120).returncode == 0:
            return candidate, env
    return None


@pytest.fixture
def request_cleanup():
    actions: list = []
    yield actions
    for action in actions:
        action()


def netns_list() -> list[str]:
    return subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root to become nobody")
def test_as_nobody_a_lossy_link_runs_in_namespaces_of_its_own_and_leaves_nothing(request_cleanup):
    found = interpreter_for_nobody()
    if found is None:
        pytest.skip("no Python that the user nobody may run with this environment's packages")
    python, env = found
    why = subprocess.run([*NOBODY, python, "-c", "from asyncfl import rootless; print(rootless.unavailable() or '')"],
                         env=env, capture_output=True, text=True, timeout=60).stdout.strip()
    if why:
        pytest.skip(f"user namespaces are not available here: {why}")
    # pytest's own temporary folders are root's alone: the run gets one that nobody may write
    work = Path(tempfile.mkdtemp(prefix="asyncfl-rootless-", dir="/tmp"))
    work.chmod(0o777)
    request_cleanup.append(lambda: shutil.rmtree(work, ignore_errors=True))
    out = work / "run"
    # Execute: the launcher as nobody, one clean and one 20% lossy server, 10 s
    run = subprocess.run([*NOBODY, python, "-m", "asyncfl.launch", "--n-servers", "2", "--losses", "0 20",
                          "--duration-s", "10", "--out-dir", str(out), "--no-live"], cwd=work, env=env,
                         capture_output=True, text=True, timeout=180)
    # Assert: it ran, in namespaces, the lossy server at most half as often; nothing is left
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    config = json.loads((out / "config.json").read_text())
    clean, lossy = config["finished"]["rounds_per_server"]
    assert config["transport"]["netns"] == [True, True]
    assert lossy <= clean / 2, (clean, lossy)
    # cubic, which the user may not set on the host, on every socket of both ends inside
    assert config["tcp"]["client_cc"] == config["tcp"]["server_cc"] == ["cubic", "cubic"]
    ours = {info["network"]["netns"] for info in config["server_info"]}  # (a sweep beside may make others)
    assert len(ours) == 2 and not ours & set(netns_list())
    assert rootless.ENV not in os.environ  # the test itself never ran inside


def test_a_forbidden_user_namespace_stops_the_run_before_it_starts_naming_the_setting(tmp_path, monkeypatch, capsys):
    import tyro

    from asyncfl.launch import main as launch
    from asyncfl.settings import LaunchArgs
    forbidden = tmp_path / "max_user_namespaces"
    forbidden.write_text("0\n")
    monkeypatch.setattr(rootless, "SYSCTLS", [(str(forbidden), "0", "sysctl -w user.max_user_namespaces=15000")])
    monkeypatch.setattr(os, "geteuid", lambda: 1000)  # as a user without root
    monkeypatch.setattr(rootless, "reexec", lambda argv: pytest.fail("re-executed despite the sysctl"))
    args = tyro.cli(LaunchArgs, args=["--n-servers", "2", "--losses", "0 20", "--out-dir", str(tmp_path / "run")])
    assert launch.main(args) == 2
    err = capsys.readouterr().err
    assert "user.max_user_namespaces" in err and "sysctl -w" in err
    assert not (tmp_path / "run" / "servers.log").exists()  # nothing started


@pytest.mark.parametrize("servers", ["", "ws://192.0.2.1:8777"])
def test_a_congestion_control_users_may_not_set_needs_namespaces_or_stops_naming_it(tmp_path, monkeypatch, capsys,
                                                                                     servers):
    import tyro

    from asyncfl.launch import main as launch
    from asyncfl.net import tcp
    from asyncfl.settings import LaunchArgs
    # Prepare: a user without root, on a kernel that lets users set only reno and bbr, and no user namespaces
    forbidden = tmp_path / "max_user_namespaces"
    forbidden.write_text("0\n")
    monkeypatch.setattr(rootless, "SYSCTLS", [(str(forbidden), "0", "sysctl -w user.max_user_namespaces=15000")])
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setattr(tcp, "allowed_unprivileged", lambda: ["reno", "bbr"])
    monkeypatch.setattr(rootless, "reexec", lambda argv: pytest.fail("re-executed without user namespaces"))
    flags = ["--n-servers", "1", "--out-dir", str(tmp_path / "run")] + (["--servers", servers] if servers else [])
    # Execute: the default, cubic (no loss: only the congestion control needs the namespaces)
    args = tyro.cli(LaunchArgs, args=flags)
    assert launch.main(args) == 2
    # Assert: it says why (the setting, and what to do) and starts nothing
    err = capsys.readouterr().err
    assert "--tcp-cc cubic" in err
    assert ("reno bbr" in err) if servers else ("user.max_user_namespaces" in err)
    assert not (tmp_path / "run" / "servers.log").exists()
