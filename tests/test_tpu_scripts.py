"""tpu_scripts/pod.py: the dry runs print exactly the commands a run would run, and the shell snippets they send
to the workers (launch, logs, status, install, the SLURM batch script) work when run here, on a fake home."""

import ast
import getpass
import glob
import importlib.util
import json
import os
import pathlib
import shlex
import subprocess
import sys
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
POD = ROOT / "tpu_scripts" / "pod.py"
TPU = ["--zone", "us-central2-b"]
TPU_CREATE = [*TPU, "--accelerator-type", "v4-32", "--version", "tpu-ubuntu2204-base"]
GCLOUD = ["gcloud", "compute", "tpus", "tpu-vm"]
EXCLUDES = [f"--exclude={p}" for p in (".git", ".venv", "venv", "__pycache__", "*.egg-info", ".pytest_cache")]
EXCLUDES += ["--exclude=.ruff_cache", "--exclude=results"]


def _load():
    spec = importlib.util.spec_from_file_location("pod", POD)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


pod = _load()


def dry(capsys, *argv: str) -> list[list[str]]:
    """The commands a dry run prints, each split as a shell would."""
    cut = argv.index("--") if "--" in argv else len(argv)  # after --, arguments are the entry point's
    assert pod.main([*argv[:cut], "--dry-run", *argv[cut:]]) == 0
    return [shlex.split(line) for line in capsys.readouterr().out.splitlines()]


def remote(cmd: list[str]) -> str:
    """The shell command a gcloud / ssh line sends to the workers."""
    return cmd[-1]


def entry_command(cmd: list[str]) -> str:
    """What launch's ``nohup sh -c`` runs on a worker."""
    words = shlex.split(remote(cmd))
    return words[words.index("-c") + 1]


# ------------------------------------------------------------------------------------------------ the script itself


def test_dry_run_in_a_subprocess_is_quick_and_parses():
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, str(POD), "run", *TPU_CREATE, "--dry-run", "--", "--lr", "3e-4"],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    assert time.perf_counter() - start < 10  # a loose bound (loaded CI); test_standard_library_only: no JAX
    cmds = [shlex.split(line) for line in proc.stdout.splitlines()]
    assert cmds[0][:5] == [*GCLOUD, "create"]
    assert cmds[-1] == [*GCLOUD, "delete", "jaxcompress", *TPU, "--quiet"]
    assert "--lr 3e-4; echo $?" in remote(next(c for c in cmds if "nohup" in remote(c)))


def test_missing_flag_in_a_subprocess_exits_nonzero_naming_it():
    proc = subprocess.run([sys.executable, str(POD), "run", "--dry-run"], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2
    assert "--zone" in proc.stderr.splitlines()[-1]
    assert proc.stdout == ""


def test_standard_library_only():
    tree = ast.parse(POD.read_text())
    modules = {
        alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names
    }
    modules |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert modules <= set(sys.stdlib_module_names), modules - set(sys.stdlib_module_names)


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["create"], "--zone"),
        (["logs", "--backend", "tpu"], "--zone"),
        (["create", *TPU], "--accelerator-type"),
        (["run", *TPU, "--accelerator-type", "v4-8"], "--version"),
        (["install", "--backend", "ssh"], "--hosts"),
        (["run", "--backend", "ssh"], "--hosts"),
        (["launch", "--backend", "slurm"], "--gpus-per-node"),
        (["script", "--backend", "slurm"], "--gpus-per-node"),
        (["logs", "--backend", "slurm"], "--job-id"),
        (["status", "--backend", "slurm"], "--job-id"),
        (["install", "--backend", "slurm", "--git-url", "https://example.com/x.git"], "--git-url"),
        (["script", *TPU], "--backend slurm"),
        (["logs", "--backend", "ssh", "--hosts", "a,b", "--worker", "2"], "--worker"),
        (["create", *TPU_CREATE, "--spot", "--preemptible"], "--preemptible"),
        (["create", "--backend", "gce"], "--backend"),
    ],
)
def test_missing_or_bad_flag_is_a_clear_error(capsys, argv, flag):
    with pytest.raises(SystemExit) as exc:
        pod.main([*argv, "--dry-run"])
    assert exc.value.code == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert flag in err.splitlines()[-1]


# -------------------------------------------------------------------------------------------------------------- tpu


def test_tpu_create(capsys):
    assert dry(capsys, "create", *TPU_CREATE) == [
        [*GCLOUD, "create", "jaxcompress", *TPU, "--accelerator-type", "v4-32", "--version", "tpu-ubuntu2204-base"]
    ]
    assert dry(capsys, "create", *TPU_CREATE, "--name", "exp1", "--project", "proj", "--spot") == [
        [*GCLOUD, "create", "exp1", *TPU, "--project", "proj", *TPU_CREATE[2:], "--spot"]
    ]
    assert dry(capsys, "create", *TPU_CREATE, "--preemptible")[0][-1] == "--preemptible"


def test_tpu_install_copies_the_checkout_without_venv_or_git(capsys):
    cmds = dry(capsys, "install", *TPU, "--bundle", "/tmp/b.tar.gz", "--exclude", "data")
    assert cmds == [
        ["tar", "-czf", "/tmp/b.tar.gz", *EXCLUDES, "--exclude=data", "-C", str(ROOT), "."],
        [*GCLOUD, "scp", "/tmp/b.tar.gz", "jaxcompress:jaxcompress.tar.gz", *TPU, "--worker=all"],
        [*GCLOUD, "ssh", "jaxcompress", *TPU, "--worker=all", "--command", cmds[2][-1]],
    ]
    assert remote(cmds[2]) == (
        "mkdir -p ~/jaxcompress && tar -xzf ~/jaxcompress.tar.gz -C ~/jaxcompress && rm -f ~/jaxcompress.tar.gz"
        " && python3 -m pip install -e ~/jaxcompress 'jax[tpu]'"
    )


def test_tpu_install_pip_extras_setup_and_git(capsys):
    argv = ["install", *TPU, "--pip-extra", "jax[tpu]==0.6.2", "--pip-extra", "tensorboard", "--python", "python3.11"]
    (cmd,) = dry(capsys, *argv, "--setup", "source ~/venv/bin/activate", "--git-url", "https://x.org/j.git")
    assert cmd[:-1] == [*GCLOUD, "ssh", "jaxcompress", *TPU, "--worker=all", "--command"]
    assert remote(cmd) == (
        "{ source ~/venv/bin/activate; } && if [ -d ~/jaxcompress/.git ]; then git -C ~/jaxcompress fetch --quiet"
        " origin; else git clone --quiet https://x.org/j.git ~/jaxcompress; fi && git -C ~/jaxcompress checkout"
        " --quiet origin/HEAD && python3.11 -m pip install -e ~/jaxcompress 'jax[tpu]==0.6.2' tensorboard"
    )
    assert remote(dry(capsys, "install", *TPU, "--pip-extra=")[-1]).endswith("pip install -e ~/jaxcompress")
    venv = remote(dry(capsys, "install", *TPU, "--python", "~/venv/bin/python", "--remote-dir", "/opt/j k")[-1])
    assert venv.endswith("&& ~/venv/bin/python -m pip install -e '/opt/j k' 'jax[tpu]'")  # ~ left to the worker


def test_tpu_launch_nohup_on_all_workers_with_pass_through(capsys):
    (cmd,) = dry(capsys, "launch", *TPU, "--steps", "100", "--", "--lr", "3e-4", "--note", "it's a test", "--dry-run")
    assert cmd[:-1] == [*GCLOUD, "ssh", "jaxcompress", *TPU, "--worker=all", "--command"]
    inner = shlex.join(
        ["python3", "-u", "tpu_scripts/train_sharded.py", "--auto-distributed", "--checkpoint-dir", "CKPT"]
    )
    inner = inner.replace("CKPT", "~/jaxcompress-run/checkpoints") + " --steps 100"
    inner += " --lr 3e-4 --note " + shlex.quote("it's a test") + " --dry-run"  # after --: the entry point's
    inner += "; echo $? > ~/jaxcompress-run/status-$(hostname).txt"
    assert remote(cmd) == (
        "mkdir -p ~/jaxcompress-run && cd ~/jaxcompress && rm -f ~/jaxcompress-run/status-$(hostname).txt && "
        f"{{ nohup sh -c {shlex.quote(inner)} > ~/jaxcompress-run/log-$(hostname).txt 2>&1 < /dev/null & "
        "echo $! > ~/jaxcompress-run/pid-$(hostname).txt; } && "
        'echo "$(hostname): started, logging to ~/jaxcompress-run/log-$(hostname).txt"'
    )
    assert "--coordinator" not in remote(cmd)  # on TPU, jax.distributed.initialize() finds the workers itself
    argv = ["--checkpoint-dir", "gs://bucket/run 1", "--entry", "examples/x.py", "--tpu-init-arg="]
    (gs,) = dry(capsys, "launch", *TPU, *argv)
    assert entry_command(gs).startswith("python3 -u examples/x.py --checkpoint-dir 'gs://bucket/run 1'; echo $?")


def test_tpu_logs_and_status(capsys):
    log = "~/jaxcompress-run/log-$(hostname).txt"
    ssh = [*GCLOUD, "ssh", "jaxcompress", *TPU]
    assert dry(capsys, "logs", *TPU) == [[*ssh, "--worker=all", "--command", f"tail -n 100 {log}"]]
    assert dry(capsys, "logs", *TPU, "--lines", "5", "--worker", "0") == [
        [*ssh, "--worker=0", "--command", f"tail -n 5 {log}"]
    ]
    pid = "$(cat ~/jaxcompress-run/pid-$(hostname).txt)"
    assert dry(capsys, "logs", *TPU, "--follow") == [
        [*ssh, "--worker=all", "--command", f"tail --pid={pid} -n +1 -f {log}"]
    ]
    ((*head, command),) = dry(capsys, "status", *TPU)
    assert head == [*ssh, "--worker=all", "--command"]
    assert command.startswith("s=$(cat ~/jaxcompress-run/status-$(hostname).txt 2>/dev/null);")


def test_tpu_fetch_per_worker_or_all(capsys):
    scp = [*GCLOUD, "scp", "jaxcompress:jaxcompress-run"]
    assert dry(capsys, "fetch", *TPU, "--num-workers", "2", "--local-dir", "out") == [
        ["mkdir", "-p", "out/worker-0"],
        [*scp, "out/worker-0", *TPU, "--worker=0", "--recurse"],
        ["mkdir", "-p", "out/worker-1"],
        [*scp, "out/worker-1", *TPU, "--worker=1", "--recurse"],
    ]
    assert dry(capsys, "fetch", *TPU, "--run-dir", "/data/run") == [
        ["mkdir", "-p", "results/jaxcompress"],
        [*GCLOUD, "scp", "jaxcompress:/data/run", "results/jaxcompress", *TPU, "--worker=all", "--recurse"],
    ]


def test_tpu_delete(capsys):
    assert dry(capsys, "delete", *TPU, "--project", "p") == [
        [*GCLOUD, "delete", "jaxcompress", *TPU, "--project", "p", "--quiet"]
    ]


def kind(cmd: list[str]) -> str:
    """A command's step, by what it is."""
    text = shlex.join(cmd)
    if cmd[:4] == GCLOUD and cmd[4] in ("create", "delete"):
        return cmd[4]
    if cmd[0] == "scancel":
        return "delete"
    if "nohup" in text or cmd[0] == "sbatch":
        return "launch"
    if "tail --pid" in text:
        return "logs"
    if "status-$(hostname)" in text:
        return "status"
    if cmd[0] == "tar" or "pip install" in text or "jaxcompress.tar.gz" in text:
        return "install"
    if cmd[0] == "rsync":
        return "fetch" if "jaxcompress-run" in text else "install"
    if "jaxcompress-run" in text or (cmd[:2] == ["mkdir", "-p"] and cmd[2].startswith("results/")):
        return "fetch"
    if cmd[:2] == ["mkdir", "-p"]:
        return "launch"  # slurm's --output folder
    return text


def kinds(cmds: list[list[str]]) -> list[str]:
    """The steps the commands make, in order (a step's consecutive commands counted once)."""
    out = [kind(cmd) for cmd in cmds]
    return [k for i, k in enumerate(out) if i == 0 or k != out[i - 1]]


def test_tpu_run_order(capsys):
    cmds = dry(capsys, "run", *TPU_CREATE, "--num-workers", "2", "--", "--seed", "1")
    assert kinds(cmds) == ["create", "install", "launch", "logs", "status", "fetch", "delete"]
    assert [c for c in cmds if "nohup" in remote(c)] == dry(capsys, "launch", *TPU, "--", "--seed", "1")
    assert remote(cmds[5]).startswith("tail --pid=")
    assert "--worker=all" in cmds[5]  # run waits for every worker, whatever --worker says


# -------------------------------------------------------------------------------------------------------------- ssh


SSH = ["--backend", "ssh", "--hosts", "me@gpu1,gpu2"]


def test_ssh_create_and_delete_say_they_do_nothing(capsys):
    for step in ("create", "delete"):
        assert pod.main([step, "--backend", "ssh", "--dry-run"]) == 0
        out, err = capsys.readouterr()
        assert out == ""
        assert f"nothing to {step}" in err


def test_ssh_install_rsyncs_then_pip_installs_on_each_host(capsys):
    pip = "python3 -m pip install -e ~/jaxcompress 'jax[cuda12]'"
    assert dry(capsys, "install", *SSH, "--source", "/src/jc/") == [
        ["rsync", "-az", *EXCLUDES, "/src/jc/", "me@gpu1:jaxcompress/"],
        ["ssh", "me@gpu1", pip],
        ["rsync", "-az", *EXCLUDES, "/src/jc/", "gpu2:jaxcompress/"],
        ["ssh", "gpu2", pip],
    ]


def test_ssh_launch_sets_coordinator_and_process_ids(capsys):
    cmds = dry(capsys, "launch", *SSH, "--steps", "7", "--", "--x", "a b")
    assert [c[:2] for c in cmds] == [["ssh", "me@gpu1"], ["ssh", "gpu2"]]
    for i, cmd in enumerate(cmds):
        assert entry_command(cmd).startswith(
            "python3 -u tpu_scripts/train_sharded.py --coordinator gpu1:8476 --num-processes 2 "
            f"--process-id {i} --checkpoint-dir ~/jaxcompress-run/checkpoints --steps 7 --x 'a b'; echo $?"
        )
    (cmd, _) = dry(capsys, "launch", *SSH, "--coordinator", "10.0.0.1:9999")
    assert "--coordinator 10.0.0.1:9999 " in remote(cmd)
    (cmd, _) = dry(capsys, "launch", *SSH, "--port", "1234")
    assert "--coordinator gpu1:1234 " in remote(cmd)


def test_ssh_logs_fetch_status(capsys):
    log = "~/jaxcompress-run/log-$(hostname).txt"
    assert dry(capsys, "logs", *SSH, "--worker", "1", "--lines", "20") == [["ssh", "gpu2", f"tail -n 20 {log}"]]
    follow = dry(capsys, "logs", *SSH, "--follow")
    assert [c[:2] for c in follow] == [["ssh", "me@gpu1"], ["ssh", "gpu2"]]
    assert all(remote(c).startswith("tail --pid=") for c in follow)
    assert dry(capsys, "fetch", *SSH, "--local-dir", "out") == [
        ["mkdir", "-p", "out/me@gpu1"],
        ["rsync", "-az", "me@gpu1:jaxcompress-run", "out/me@gpu1/"],
        ["mkdir", "-p", "out/gpu2"],
        ["rsync", "-az", "gpu2:jaxcompress-run", "out/gpu2/"],
    ]
    assert [c[:2] for c in dry(capsys, "status", *SSH)] == [["ssh", "me@gpu1"], ["ssh", "gpu2"]]


def test_ssh_run_order(capsys):
    cmds = dry(capsys, "run", *SSH, "--", "--seed", "1")
    assert kinds(cmds) == ["install", "launch", "logs", "status", "fetch"]  # create / delete: no-ops


# ------------------------------------------------------------------------------------------------------------ slurm


def slurm(tmp_path, *more: str) -> list[str]:
    return ["--backend", "slurm", "--gpus-per-node", "8", "--nodes", "2", "--run-dir", str(tmp_path), *more]


def test_slurm_script(capsys, tmp_path):
    argv = slurm(tmp_path, "--partition", "gpu", "--time", "01:00:00", "--sbatch-option=--qos=high", "--steps", "9")
    assert pod.main(["script", *argv, "--source", "/src/jc", "--setup", "module load cuda", "--", "--x", "a b"]) == 0
    train = (
        'exec python3 -u tpu_scripts/train_sharded.py --coordinator "$JAXCOMPRESS_COORDINATOR" --num-processes'
        f' "$SLURM_NTASKS" --process-id "$SLURM_PROCID" --checkpoint-dir {tmp_path}/checkpoints --steps 9 --x'
        " 'a b'"
    )
    assert capsys.readouterr().out.splitlines() == [
        "#!/bin/bash",
        "#SBATCH --job-name=jaxcompress",
        "#SBATCH --nodes=2",
        "#SBATCH --ntasks-per-node=1",
        "#SBATCH --gpus-per-node=8",
        f"#SBATCH --output={tmp_path}/jaxcompress-%j.out",
        "#SBATCH --partition=gpu",
        "#SBATCH --time=01:00:00",
        "#SBATCH --qos=high",
        "set -e",
        "module load cuda",
        "cd /src/jc",
        'export JAXCOMPRESS_COORDINATOR="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1):8476"',
        f"srun bash -c {shlex.quote(train)}",
    ]


def test_slurm_gres_instead_of_gpus_per_node(capsys, tmp_path):
    argv = ["--backend", "slurm", "--gpus-per-node", "0", "--sbatch-option=--gres=gpu:4", "--run-dir", str(tmp_path)]
    assert pod.main(["script", *argv]) == 0
    script = capsys.readouterr().out
    assert "#SBATCH --gres=gpu:4\n" in script
    assert "--gpus-per-node" not in script


def test_slurm_install_launch_logs_delete(capsys, tmp_path):
    assert dry(capsys, "install", *slurm(tmp_path)) == [
        ["python3", "-m", "pip", "install", "-e", str(ROOT), "jax[cuda12]"]
    ]
    setup = dry(capsys, "install", *slurm(tmp_path), "--setup", "source env/bin/activate", "--pip-extra=")
    assert setup == [["bash", "-c", f"{{ source env/bin/activate; }} && python3 -m pip install -e {ROOT}"]]

    assert pod.main(["launch", *slurm(tmp_path), "--dry-run"]) == 0
    out, err = capsys.readouterr()
    sbatch_file = f"{tmp_path}/jaxcompress.sbatch"
    assert [shlex.split(line) for line in out.splitlines()] == [["mkdir", "-p", str(tmp_path)], ["sbatch", sbatch_file]]
    assert f"would write {sbatch_file}:\n#!/bin/bash\n" in err
    assert not os.path.exists(sbatch_file)  # a dry run writes nothing

    out = f"{tmp_path}/jaxcompress-42.out"
    assert dry(capsys, "logs", *slurm(tmp_path), "--job-id", "42") == [["tail", "-n", "100", out]]
    assert dry(capsys, "logs", *slurm(tmp_path), "--job-id", "42", "--follow") == [["tail", "-n", "+1", "-f", out]]
    assert dry(capsys, "delete", "--backend", "slurm", "--job-id", "42") == [["scancel", "42"]]
    assert dry(capsys, "delete", "--backend", "slurm", "--name", "exp") == [
        ["scancel", "--name", "exp", "--user", getpass.getuser()]
    ]
    assert dry(capsys, "status", "--backend", "slurm", "--job-id", "42")[0][:3] == ["sacct", "--jobs", "42"]


def test_slurm_launch_writes_the_script(monkeypatch, tmp_path):
    ran = []
    monkeypatch.setattr(pod.subprocess, "run", lambda cmd, check: ran.append(cmd))
    assert pod.main(["launch", *slurm(tmp_path / "run"), "--sbatch-file", str(tmp_path / "job.sbatch")]) == 0
    assert ran == [["mkdir", "-p", str(tmp_path / "run")], ["sbatch", str(tmp_path / "job.sbatch")]]
    assert (tmp_path / "job.sbatch").read_text().startswith("#!/bin/bash\n#SBATCH --job-name=jaxcompress\n")


def test_slurm_run_order(capsys, tmp_path):
    cmds = dry(capsys, "run", *slurm(tmp_path))
    assert kinds(cmds) == ["install", "launch", "delete"]
    assert cmds[-2] == ["sbatch", "--wait", f"{tmp_path}/jaxcompress.sbatch"]  # run waits for the job
    assert cmds[-1] == ["scancel", "--name", "jaxcompress", "--user", getpass.getuser()]


# ---------------------------------------------------------------------------- run, really run (fake subprocess)


def fake_commands(monkeypatch, fail_when: str | None = None, code: int = 3):
    """Records the commands main runs; the first whose text contains ``fail_when`` fails with exit ``code``."""
    ran = []

    def fake_run(cmd, check):
        assert check
        ran.append(cmd)
        if fail_when and fail_when in shlex.join(cmd):
            raise subprocess.CalledProcessError(code, cmd)

    monkeypatch.setattr(pod.subprocess, "run", fake_run)
    return ran


@pytest.mark.parametrize(
    ("fail_when", "expected"),
    [
        (None, ["create", "install", "launch", "logs", "status", "fetch", "delete"]),
        ("nohup", ["create", "install", "launch", "delete"]),  # launch failed: nothing to fetch, still deleted
        ("create", ["create", "delete"]),  # create failed (or was interrupted): delete anyway
        ("exit status", ["create", "install", "launch", "logs", "status", "fetch", "delete"]),
    ],
)
def test_run_deletes_the_slice_whatever_fails(monkeypatch, capsys, fail_when, expected):
    ran = fake_commands(monkeypatch, fail_when)
    assert pod.main(["run", *TPU_CREATE]) == (3 if fail_when else 0)
    assert kinds(ran) == expected
    err = capsys.readouterr().err
    assert [line for line in err.splitlines() if line.startswith("+ ")] == ["+ " + shlex.join(c) for c in ran]
    if fail_when:
        assert "command failed (exit status 3)" in err


def test_run_reports_the_first_failure_when_delete_fails_too(monkeypatch, capsys):
    ran = []

    def fake_run(cmd, check):
        ran.append(cmd)
        if cmd[:4] == GCLOUD and cmd[4] in ("create", "delete"):
            raise subprocess.CalledProcessError(4 if cmd[4] == "create" else 5, cmd)

    monkeypatch.setattr(pod.subprocess, "run", fake_run)
    assert pod.main(["run", *TPU_CREATE]) == 4
    err = capsys.readouterr().err
    assert "delete failed: make sure jaxcompress is gone (gcloud compute tpus tpu-vm list" in err


def test_run_keep_leaves_the_slice(monkeypatch, capsys):
    ran = fake_commands(monkeypatch)
    assert pod.main(["run", *TPU_CREATE, "--keep"]) == 0
    assert kinds(ran)[-1] == "fetch"
    assert "--keep" in capsys.readouterr().err


def test_ssh_status_reports_every_host_then_fails(monkeypatch):
    ran = fake_commands(monkeypatch, "me@gpu1")
    assert pod.main(["status", *SSH]) == 3
    assert [c[1] for c in ran] == ["me@gpu1", "gpu2"]


# ---------------------------------------------------------------- the workers' shell snippets, run on a fake home


def fake_python(tmp_path) -> str:
    """An interpreter that records its arguments in $RECORD and exits $EXIT (0 by default)."""
    path = tmp_path / "fakepython"
    path.write_text(
        f"#!{sys.executable}\nimport json, os, sys\n"
        "json.dump(sys.argv[1:], open(os.environ['RECORD'], 'w'))\nprint('training', flush=True)\n"
        "sys.exit(int(os.environ.get('EXIT', '0')))\n"
    )
    path.chmod(0o755)
    return str(path)


def on_worker(home, command: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["sh", "-c", command], env={**os.environ, "HOME": str(home), **env}, capture_output=True, text=True
    )


def wait_for(pattern: str, timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    while not (found := glob.glob(pattern)) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert found, pattern
    return found[0]


@pytest.mark.parametrize("exit_code", [0, 7])
def test_launch_logs_and_status_snippets_work(capsys, tmp_path, exit_code):
    home = tmp_path / "home"
    (home / "jaxcompress" / "tpu_scripts").mkdir(parents=True)
    python, record = fake_python(tmp_path), tmp_path / "argv.json"
    flags = [*SSH, "--python", python, "--setup", f"export EXIT={exit_code}"]  # the entry point sees --setup's env
    (launch, _) = dry(capsys, "launch", *flags, "--steps", "3", "--", "--note", 'it\'s "quoted" $HOME')
    started = on_worker(home, remote(launch), RECORD=str(record))
    assert started.returncode == 0, started.stderr
    assert "started, logging to" in started.stdout

    if exit_code == 0:  # tail --pid checks once a second (and here, an orphan is reaped a second late): once
        (follow, _) = dry(capsys, "logs", *flags, "--follow")
        followed = on_worker(home, remote(follow))  # returns once the entry point has exited
        assert followed.returncode == 0, followed.stderr
        assert followed.stdout == "training\n"
    wait_for(str(home / "jaxcompress-run" / "status-*.txt"))
    assert json.loads(record.read_text()) == [
        "-u",
        "tpu_scripts/train_sharded.py",
        *["--coordinator", "gpu1:8476", "--num-processes", "2", "--process-id", "0"],
        *["--checkpoint-dir", f"{home}/jaxcompress-run/checkpoints", "--steps", "3"],
        *["--note", 'it\'s "quoted" $HOME'],
    ]
    (status, _) = dry(capsys, "status", *flags)
    checked = on_worker(home, remote(status))
    assert checked.returncode == (exit_code != 0)
    assert f"exit status {exit_code}" in checked.stdout
    assert len(glob.glob(str(home / "jaxcompress-run" / "*-*.txt"))) == 3  # log, pid, status

    (logs, _) = dry(capsys, "logs", *flags, "--lines", "1")
    assert on_worker(home, remote(logs)).stdout == "training\n"


def test_status_snippet_before_the_run_ends(capsys, tmp_path):
    (status, _) = dry(capsys, "status", *SSH)
    checked = on_worker(tmp_path, remote(status))
    assert checked.returncode == 1
    assert "still running, or never started" in checked.stdout


def test_install_bundle_and_unpack_snippets_work(capsys, tmp_path):
    source, home = tmp_path / "src", tmp_path / "home"
    for path in ("jaxcompress/core.py", ".venv/bin/python", ".git/HEAD", "results/x/log.txt", "a/__pycache__/m.pyc"):
        (source / path).parent.mkdir(parents=True, exist_ok=True)
        (source / path).write_text("x")
    home.mkdir()
    python, record = fake_python(tmp_path), tmp_path / "argv.json"
    bundle = tmp_path / "bundle.tar.gz"
    tar, scp, unpack = dry(
        capsys, "install", *TPU, "--source", str(source), "--bundle", str(bundle), "--python", python
    )
    subprocess.run(tar, check=True)
    # what gcloud's scp does: the bundle lands in the home folder, as the name after NAME: says
    os.rename(bundle, home / scp[6].partition(":")[2])
    done = on_worker(home, remote(unpack), RECORD=str(record))
    assert done.returncode == 0, done.stderr
    files = sorted(str(p.relative_to(home)) for p in home.rglob("*") if p.is_file())
    assert files == ["jaxcompress/jaxcompress/core.py"]  # no venv, git, results or caches; the bundle removed
    assert json.loads(record.read_text()) == ["-m", "pip", "install", "-e", f"{home}/jaxcompress", "jax[tpu]"]


def test_sbatch_script_runs_with_a_fake_srun(capsys, tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text('#!/bin/sh\nSLURM_PROCID=1 exec "$@"\n')
    (bin_dir / "scontrol").write_text("#!/bin/sh\necho node7\necho node8\n")
    for tool in ("srun", "scontrol"):
        (bin_dir / tool).chmod(0o755)
    python, record = fake_python(tmp_path), tmp_path / "argv.json"
    argv = slurm(tmp_path / "run", "--source", str(tmp_path), "--python", python, "--", "--x", "a 'b'")
    assert pod.main(["script", *argv]) == 0
    (tmp_path / "job.sbatch").write_text(capsys.readouterr().out)
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_NODELIST": "node[7-8]", "SLURM_NTASKS": "2"}
    done = subprocess.run(
        ["bash", str(tmp_path / "job.sbatch")], env={**os.environ, **env, "RECORD": str(record)}, capture_output=True
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(record.read_text()) == [
        "-u",
        "tpu_scripts/train_sharded.py",
        *["--coordinator", "node7:8476", "--num-processes", "2", "--process-id", "1"],
        *["--checkpoint-dir", f"{tmp_path}/run/checkpoints", "--x", "a 'b'"],
    ]
