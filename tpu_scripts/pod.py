#!/usr/bin/env python3
"""Run jaxcompress training on a Cloud TPU VM slice, or on GPU hosts over ssh or SLURM.

One process per host runs ``tpu_scripts/train_sharded.py`` (``jax.distributed.initialize`` joins them):

    python tpu_scripts/pod.py run --backend tpu --zone us-central2-b --accelerator-type v4-32 \\
        --version tpu-ubuntu2204-base --num-workers 4 --steps 1000 -- ENTRY_ARGS
    python tpu_scripts/pod.py run --backend ssh --hosts gpu1,gpu2 --steps 1000
    python tpu_scripts/pod.py run --backend slurm --nodes 2 --gpus-per-node 8 --steps 1000

Subcommands: create, install, launch, logs, status, fetch, delete, run (all of them in order, deleting the slice
in a ``finally``) and script (print the SLURM batch script). ``--dry-run`` prints the exact commands, one per line,
shell-quoted, and runs nothing. Arguments after ``--`` go to the training entry point. Standard library only (no
JAX import), so it runs anywhere Python 3.11 does. See tpu_scripts/README.md for the flow and the costs.
"""

from __future__ import annotations

import argparse
import getpass
import os
import shlex
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENTRY = "tpu_scripts/train_sharded.py"
SUBCOMMANDS = ("create", "install", "launch", "logs", "status", "fetch", "delete", "run", "script")
# Left out when the local checkout is copied to the workers (tar and rsync patterns, matched at any depth).
DEFAULT_EXCLUDES = (".git", ".venv", "venv", "__pycache__", "*.egg-info", ".pytest_cache", ".ruff_cache", "results")
# What pip installs next to the project when --pip-extra is not given.
DEFAULT_EXTRAS = {"tpu": ("jax[tpu]",), "ssh": ("jax[cuda12]",), "slurm": ("jax[cuda12]",)}
DEFAULT_PORT = 8476


# ---------------------------------------------------------------------------------------------------------- helpers


def sh_path(path: str) -> str:
    """``path`` for a remote shell: a leading ``~/`` is left unquoted, so the remote shell expands it."""
    if path == "~":
        return "~"
    if path.startswith("~/"):
        return "~/" + shlex.quote(path[2:])
    return shlex.quote(path)


def copy_path(path: str) -> str:
    """``path`` for the remote side of scp / rsync, where a relative path is relative to the home directory."""
    if path == "~":
        return "."
    return path[2:] if path.startswith("~/") else path


def hostname_of(host: str) -> str:
    """``user@host`` -> ``host``."""
    return host.rpartition("@")[2]


class Runner:
    """Prints (``--dry-run``) or runs commands; notes go to stderr, so stdout is only commands in a dry run."""

    def __init__(self, dry_run: bool):
        self.dry_run = dry_run

    def __call__(self, cmd: list[str]) -> None:
        if self.dry_run:
            print(shlex.join(cmd), flush=True)
            return
        print("+ " + shlex.join(cmd), file=sys.stderr, flush=True)
        subprocess.run(cmd, check=True)

    def parallel(self, cmds: list[list[str]]) -> None:
        """Runs the commands at once (one ``tail -f`` per host), failing if any fails."""
        if self.dry_run or len(cmds) == 1:
            for cmd in cmds:
                self(cmd)
            return
        for cmd in cmds:
            print("+ " + shlex.join(cmd), file=sys.stderr, flush=True)
        procs = [subprocess.Popen(cmd) for cmd in cmds]
        codes = [proc.wait() for proc in procs]
        for cmd, code in zip(cmds, codes, strict=True):
            if code:
                raise subprocess.CalledProcessError(code, cmd)

    def note(self, message: str) -> None:
        print(f"pod.py: {message}", file=sys.stderr, flush=True)

    def write(self, path: str, text: str) -> None:
        if self.dry_run:
            self.note(f"would write {path}:")
            sys.stderr.write(text)
            sys.stderr.flush()
            return
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w") as f:
            f.write(text)
        self.note(f"wrote {path}")


# ---------------------------------------------------------------------------------------- worker shell snippets


def run_file(args, kind: str) -> str:
    """A per-host file in the run directory (``log``, ``pid`` or ``status``), for the worker's shell."""
    return f"{sh_path(args.run_dir)}/{kind}-$(hostname).txt"


def with_setup(args, command: str) -> str:
    """``command`` after ``--setup``, in braces: in the same shell (an activated env stays) and whatever its
    ``;``, ``||`` or ``&&`` (the rest runs only if it succeeds)."""
    return f"{{ {args.setup}; }} && {command}" if args.setup else command


def install_command(args, unpack: str | None) -> str:
    """On a worker: get the source (unpack the copied bundle, or git), then pip install it with the extras."""
    src = sh_path(args.remote_dir)
    if args.git_url:
        steps = [
            f"if [ -d {src}/.git ]; then git -C {src} fetch --quiet origin; "
            f"else git clone --quiet {shlex.quote(args.git_url)} {src}; fi",
            f"git -C {src} checkout --quiet {shlex.quote(args.git_ref)}",
        ]
    elif unpack is not None:
        steps = [f"mkdir -p {src}", f"tar -xzf {sh_path(unpack)} -C {src}", f"rm -f {sh_path(unpack)}"]
    else:  # rsync already put the checkout there
        steps = []
    pip = f"{sh_path(args.python)} -m pip install -e {src}"
    if args.extras:
        pip += " " + " ".join(shlex.quote(extra) for extra in args.extras)
    return with_setup(args, " && ".join([*steps, pip]))


def train_args(args) -> list[str]:
    """The entry point's arguments after the distributed ones (those are per backend)."""
    out = ["--checkpoint-dir", args.checkpoint_dir]
    if args.steps is not None:
        out += ["--steps", str(args.steps)]
    return out + args.extra


def launch_command(args, distributed: list[str]) -> str:
    """On a worker: start the entry point under nohup, logging to log-HOST.txt; its exit status goes to
    status-HOST.txt when it ends and its pid to pid-HOST.txt (which ``logs --follow`` waits on)."""
    status = run_file(args, "status")
    train = [args.python, "-u", args.entry, *distributed, *train_args(args)]
    quoted = [sh_path(word) if word.startswith("~/") else shlex.quote(word) for word in train]
    inner = f"{' '.join(quoted)}; echo $? > {status}"
    log, pid = run_file(args, "log"), run_file(args, "pid")
    command = (
        f"mkdir -p {sh_path(args.run_dir)} && cd {sh_path(args.remote_dir)} && rm -f {status} && "
        f"{{ nohup sh -c {shlex.quote(inner)} > {log} 2>&1 < /dev/null & echo $! > {pid}; }} && "
        f'echo "$(hostname): started, logging to {log}"'
    )
    return with_setup(args, command)


def logs_command(args, follow: bool) -> str:
    log = run_file(args, "log")
    if follow:  # until the entry point exits
        return f"tail --pid=$(cat {run_file(args, 'pid')}) -n +1 -f {log}"
    return f"tail -n {args.lines} {log}"


def status_command(args) -> str:
    """On a worker: print the entry point's exit status; fail unless it exited 0 (so also while it still runs)."""
    return (
        f"s=$(cat {run_file(args, 'status')} 2>/dev/null); "
        'echo "$(hostname): exit status ${s:-none (still running, or never started)}"; [ "$s" = 0 ]'
    )


def bundle_command(args) -> list[str]:
    """Locally: the checkout as one tarball, without the virtualenv, git objects, caches and fetched results."""
    excludes = [f"--exclude={pattern}" for pattern in [*DEFAULT_EXCLUDES, *args.exclude]]
    return ["tar", "-czf", args.bundle, *excludes, "-C", args.source, "."]


# ------------------------------------------------------------------------------------------------------ backends


class Tpu:
    """A Cloud TPU VM slice, through gcloud."""

    def __init__(self, args, runner: Runner):
        self.args, self.run = args, runner

    def gcloud(self, verb: str, *positional: str) -> list[str]:
        cmd = ["gcloud", "compute", "tpus", "tpu-vm", verb, *positional, "--zone", self.args.zone]
        return cmd + (["--project", self.args.project] if self.args.project else [])

    def ssh(self, command: str, worker: str = "all") -> list[str]:
        return [*self.gcloud("ssh", self.args.name), f"--worker={worker}", "--command", command]

    def create(self) -> None:
        a = self.args
        cmd = [*self.gcloud("create", a.name), "--accelerator-type", a.accelerator_type, "--version", a.version]
        if a.spot:
            cmd.append("--spot")
        if a.preemptible:
            cmd.append("--preemptible")
        self.run(cmd)

    def install(self) -> None:
        a = self.args
        if a.git_url:
            self.run(self.ssh(install_command(a, None)))
            return
        remote_bundle = a.remote_dir.rstrip("/") + ".tar.gz"
        self.run(bundle_command(a))
        self.run([*self.gcloud("scp", a.bundle, f"{a.name}:{copy_path(remote_bundle)}"), "--worker=all"])
        self.run(self.ssh(install_command(a, remote_bundle)))

    def launch(self, wait: bool = False) -> None:  # waiting is logs --follow's
        init = [self.args.tpu_init_arg] if self.args.tpu_init_arg else []  # jax.distributed.initialize() detects
        self.run(self.ssh(launch_command(self.args, init)))

    def logs(self, follow: bool, worker: str | None = None) -> None:
        self.run(self.ssh(logs_command(self.args, follow), worker or self.args.worker))

    def status(self) -> None:
        self.run(self.ssh(status_command(self.args)))

    def fetch(self) -> None:
        a = self.args
        remote = f"{a.name}:{copy_path(a.run_dir)}"
        if a.num_workers:  # one folder per worker: their checkpoint shards would otherwise overwrite each other
            for i in range(a.num_workers):
                local = os.path.join(a.local_dir, f"worker-{i}")
                self.run(["mkdir", "-p", local])
                self.run([*self.gcloud("scp", remote, local), f"--worker={i}", "--recurse"])
        else:
            self.run(["mkdir", "-p", a.local_dir])
            self.run([*self.gcloud("scp", remote, a.local_dir), "--worker=all", "--recurse"])

    def delete(self) -> None:
        self.run([*self.gcloud("delete", self.args.name), "--quiet"])

    def leftover_hint(self) -> str:
        return shlex.join(self.gcloud("list"))


class Ssh:
    """Hosts you already have (multi-GPU machines), through ssh and rsync."""

    def __init__(self, args, runner: Runner):
        self.args, self.run = args, runner

    def create(self) -> None:
        self.run.note("--backend ssh: nothing to create (the hosts already exist)")

    def install(self) -> None:
        a = self.args
        for host in a.hosts:
            if not a.git_url:
                excludes = [f"--exclude={pattern}" for pattern in [*DEFAULT_EXCLUDES, *a.exclude]]
                dest = f"{host}:{copy_path(a.remote_dir).rstrip('/')}/"
                self.run(["rsync", "-az", *excludes, a.source.rstrip("/") + "/", dest])
            self.run(["ssh", host, install_command(a, None)])

    def coordinator(self) -> str:
        return self.args.coordinator or f"{hostname_of(self.args.hosts[0])}:{self.args.port}"

    def launch(self, wait: bool = False) -> None:  # waiting is logs --follow's
        a = self.args
        for i, host in enumerate(a.hosts):
            distributed = ["--coordinator", self.coordinator(), "--num-processes", str(len(a.hosts))]
            self.run(["ssh", host, launch_command(a, [*distributed, "--process-id", str(i)])])

    def logs(self, follow: bool, worker: str | None = None) -> None:
        worker = worker or self.args.worker
        hosts = self.args.hosts if worker == "all" else [self.args.hosts[int(worker)]]
        self.run.parallel([["ssh", host, logs_command(self.args, follow)] for host in hosts])

    def status(self) -> None:
        failed = None
        for host in self.args.hosts:  # every host's status, then the first failure
            try:
                self.run(["ssh", host, status_command(self.args)])
            except subprocess.CalledProcessError as err:
                failed = failed or err
        if failed:
            raise failed

    def fetch(self) -> None:
        a = self.args
        for host in a.hosts:
            local = os.path.join(a.local_dir, host)
            self.run(["mkdir", "-p", local])
            self.run(["rsync", "-az", f"{host}:{copy_path(a.run_dir)}", local + "/"])

    def delete(self) -> None:
        self.run.note("--backend ssh: nothing to delete (the hosts are yours; the entry point exits by itself)")

    def leftover_hint(self) -> str:
        return "the hosts"


class Slurm:
    """A SLURM cluster with a shared filesystem: one task per node, all of a node's GPUs per task."""

    def __init__(self, args, runner: Runner):
        self.args, self.run = args, runner

    def output(self) -> str:
        return os.path.join(self.args.run_dir, f"{self.args.name}-%j.out")

    def script(self) -> str:
        a = self.args
        lines = [
            "#!/bin/bash",
            f"#SBATCH --job-name={a.name}",
            f"#SBATCH --nodes={a.nodes}",
            "#SBATCH --ntasks-per-node=1",
            *([f"#SBATCH --gpus-per-node={a.gpus_per_node}"] if a.gpus_per_node else []),
            f"#SBATCH --output={self.output()}",
        ]
        for flag, value in (("partition", a.partition), ("time", a.time), ("account", a.account)):
            if value:
                lines.append(f"#SBATCH --{flag}={value}")
        lines += [f"#SBATCH {option}" for option in a.sbatch_option]
        lines.append("set -e")
        if a.setup:
            lines.append(a.setup)
        lines.append(f"cd {shlex.quote(a.source)}")
        coordinator = a.coordinator or f'$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1):{a.port}'
        lines.append(f'export JAXCOMPRESS_COORDINATOR="{coordinator}"')
        distributed = '--coordinator "$JAXCOMPRESS_COORDINATOR" --num-processes "$SLURM_NTASKS" '
        distributed += '--process-id "$SLURM_PROCID"'
        train = f"exec {shlex.quote(a.python)} -u {shlex.quote(a.entry)} {distributed} {shlex.join(train_args(a))}"
        lines.append(f"srun bash -c {shlex.quote(train)}")  # bash -c: SLURM_PROCID is each task's own
        return "\n".join(lines) + "\n"

    def create(self) -> None:
        self.run.note("--backend slurm: nothing to create (sbatch allocates the nodes)")

    def install(self) -> None:
        a = self.args
        pip = [a.python, "-m", "pip", "install", "-e", a.source, *a.extras]
        self.run(["bash", "-c", with_setup(a, shlex.join(pip))] if a.setup else pip)

    def launch(self, wait: bool = False) -> None:
        a = self.args
        self.run(["mkdir", "-p", a.run_dir])  # SLURM does not make the --output folder
        self.run.write(a.sbatch_file, self.script())
        self.run(["sbatch", *(["--wait"] if wait else []), a.sbatch_file])
        if not wait:
            self.run.note(f"output: {self.output()} (%j: the job id sbatch prints; logs --job-id ID shows it)")

    def logs(self, follow: bool, worker: str | None = None) -> None:
        out = self.output().replace("%j", self.args.job_id)
        self.run(["tail", "-n", "+1", "-f", out] if follow else ["tail", "-n", str(self.args.lines), out])

    def status(self) -> None:  # needs SLURM's accounting (sacct)
        self.run(["sacct", "--jobs", self.args.job_id, "--allocations", "--format", "JobID,JobName,State,ExitCode"])

    def fetch(self) -> None:
        self.run.note(f"--backend slurm: nothing to fetch (the results are in {self.args.run_dir}, a shared folder)")

    def delete(self) -> None:
        a = self.args
        self.run(["scancel", a.job_id] if a.job_id else ["scancel", "--name", a.name, "--user", getpass.getuser()])

    def leftover_hint(self) -> str:
        return f"squeue --name {self.args.name}"


BACKENDS = {"tpu": Tpu, "ssh": Ssh, "slurm": Slurm}


def run_all(backend, args, runner: Runner) -> None:
    """create, install, launch, wait (``logs --follow``), status, fetch, delete. The fetch (once launched) and the
    delete run even when a step before them fails or is interrupted: a slice is billed for as long as it exists."""
    error = None
    launched = False
    try:
        backend.create()
        backend.install()
        backend.launch(wait=True)  # slurm: sbatch --wait, failing with the job; tpu / ssh: started under nohup
        launched = True
        if not isinstance(backend, Slurm):
            backend.logs(follow=True, worker="all")  # returns when every worker's entry point has exited
            backend.status()  # fails unless every one exited 0
    except BaseException as err:
        error = err
        raise
    finally:
        try:
            if launched:
                backend.fetch()
        finally:
            if args.keep:
                runner.note(f"--keep: {args.name} is left running (and billed); delete it with the delete subcommand")
            else:
                try:
                    backend.delete()
                except subprocess.CalledProcessError:
                    runner.note(f"delete failed: make sure {args.name} is gone ({backend.leftover_hint()})")
                    if error is None:
                        raise


# ---------------------------------------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    g = common.add_argument_group("all backends")
    g.add_argument("--backend", choices=sorted(BACKENDS), default="tpu", help="where to run (default: tpu)")
    g.add_argument("--dry-run", action="store_true", help="print the exact commands, one per line; run nothing")
    g.add_argument("--name", default="jaxcompress", help="TPU VM / SLURM job name (default: %(default)s)")

    g = common.add_argument_group("tpu")
    g.add_argument("--zone", help="e.g. us-central2-b (required with --backend tpu)")
    g.add_argument("--project", help="Google Cloud project (default: gcloud's configured one)")
    g.add_argument("--accelerator-type", help="slice type, e.g. v4-8 or v5litepod-16 (required by create and run)")
    g.add_argument("--version", help="TPU VM runtime, e.g. tpu-ubuntu2204-base (required by create and run)")
    cheap = g.add_mutually_exclusive_group()
    cheap.add_argument("--spot", action="store_true", help="spot VM: cheaper, may be reclaimed at any time")
    cheap.add_argument("--preemptible", action="store_true", help="preemptible VM: cheaper, may be reclaimed")
    g.add_argument("--num-workers", type=int, help="hosts in the slice: fetch then copies each into worker-I/")
    g.add_argument(
        "--tpu-init-arg",
        default="--auto-distributed",
        help="tells the entry point to let jax.distributed.initialize() find the slice (default: %(default)s;"
        " --tpu-init-arg= for none)",
    )

    g = common.add_argument_group("ssh")
    g.add_argument("--hosts", help="comma-separated [user@]host list; the first is the coordinator")
    g.add_argument("--coordinator", help="HOST:PORT the workers reach the coordinator at (default: first host)")
    g.add_argument("--port", type=int, default=DEFAULT_PORT, help="coordinator port (default: %(default)s)")

    g = common.add_argument_group("slurm")
    g.add_argument("--nodes", type=int, default=1, help="nodes, one task each (default: %(default)s)")
    g.add_argument("--gpus-per-node", type=int, help="GPUs per node (required by launch, run, script; 0: no such line)")
    g.add_argument("--partition", help="#SBATCH --partition")
    g.add_argument("--time", help="#SBATCH --time, e.g. 04:00:00")
    g.add_argument("--account", help="#SBATCH --account")
    g.add_argument("--sbatch-option", action="append", default=[], help="another #SBATCH line, e.g. --qos=high")
    g.add_argument("--sbatch-file", help="where launch writes the batch script (default: RUN_DIR/NAME.sbatch)")
    g.add_argument("--job-id", help="the job logs reads and delete cancels (delete default: jobs named NAME)")

    g = common.add_argument_group("install")
    g.add_argument("--source", default=REPO, help="local checkout to copy (default: this repository)")
    g.add_argument("--remote-dir", default="~/jaxcompress", help="where it goes on each worker (default: %(default)s)")
    g.add_argument("--git-url", help="clone this repository on the workers instead of copying --source")
    g.add_argument("--git-ref", default="origin/HEAD", help="commit, tag or origin/BRANCH (default: %(default)s)")
    g.add_argument(
        "--pip-extra",
        dest="extras",
        metavar="PKG",
        action="append",
        help="package pip installs with the project, repeatable (default: jax[tpu] on tpu, jax[cuda12] otherwise;"
        " --pip-extra= for none)",
    )
    g.add_argument("--python", default="python3", help="interpreter on the workers, >= 3.11 (default: %(default)s)")
    g.add_argument(
        "--setup", help="shell command run on each worker before install and launch, e.g. 'module load cuda'"
    )
    g.add_argument("--exclude", action="append", default=[], help="another pattern left out of the copy")
    g.add_argument("--bundle", help="local tarball of the checkout (tpu; default: in the temp folder)")

    g = common.add_argument_group("launch, logs, fetch, run")
    g.add_argument("--entry", default=ENTRY, help="script run on every worker (default: %(default)s)")
    g.add_argument("--run-dir", default="~/jaxcompress-run", help="per-run folder on the workers: logs, status")
    g.add_argument("--checkpoint-dir", help="passed to the entry point (default: RUN_DIR/checkpoints)")
    g.add_argument("--steps", type=int, help="passed to the entry point as --steps")
    g.add_argument("--follow", action="store_true", help="logs: stream from the start until the run ends")
    g.add_argument("--lines", type=int, default=100, help="logs: last lines shown (default: %(default)s)")
    g.add_argument("--worker", default="all", help="logs: worker index or all (default: %(default)s)")
    g.add_argument("--local-dir", help="fetch: where results go (default: results/NAME)")
    g.add_argument("--keep", action="store_true", help="run: do not delete the slice at the end (it stays billed)")

    parser = argparse.ArgumentParser(
        prog="pod.py",
        description=__doc__.split("\n\n")[0],
        epilog="Arguments after -- go to the entry point. `pod.py SUBCOMMAND -h` lists the flags.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="SUBCOMMAND")
    helps = {
        "create": "create the TPU VM slice (no-op on ssh and slurm)",
        "install": "copy (or git clone) the project to every worker and pip install it",
        "launch": "start the entry point on every worker (slurm: write the batch script and sbatch it)",
        "logs": "show (--follow: stream) the entry point's log on the workers",
        "status": "show each worker's exit status; fail unless all exited 0 (slurm: sacct --job-id)",
        "fetch": "copy the run folder back from every worker",
        "delete": "delete the TPU VM slice (slurm: scancel; no-op on ssh)",
        "run": "create, install, launch, wait, status, fetch and delete; deletes even when a step fails",
        "script": "print the SLURM batch script that launch submits",
    }
    parser.subcommands = {
        name: sub.add_parser(
            name,
            parents=[common],
            help=helps[name],
            description=helps[name],
            usage=f"pod.py {name} [--backend {{tpu,ssh,slurm}}] [--dry-run] [options] [-- ENTRY_ARGS ...]",
        )
        for name in SUBCOMMANDS
    }
    return parser


def parse(argv: list[str]) -> argparse.Namespace:
    extra: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1 :]
    parser = build_parser()
    args = parser.parse_args(argv)
    args.extra = extra
    error = parser.subcommands[args.command].error  # exits 2 with the subcommand's usage line

    b, cmd = args.backend, args.command
    if b == "tpu" and not args.zone:
        error("--backend tpu needs --zone")
    if b == "tpu" and cmd in ("create", "run"):
        for flag in ("accelerator_type", "version"):
            if not getattr(args, flag):
                error(f"--backend tpu {cmd} needs --{flag.replace('_', '-')}")
    if b == "ssh" and cmd not in ("create", "delete") and not args.hosts:
        error("--backend ssh needs --hosts (comma-separated)")
    if b == "slurm" and cmd in ("launch", "run", "script") and args.gpus_per_node is None:
        error(f"--backend slurm {cmd} needs --gpus-per-node")
    if b == "slurm" and cmd in ("logs", "status") and not args.job_id:
        error(f"--backend slurm {cmd} needs --job-id (the number sbatch printed)")
    if b == "slurm" and args.git_url:
        error("--git-url is for tpu and ssh; slurm installs --source from the shared filesystem")
    if cmd == "script" and b != "slurm":
        error("script is for --backend slurm")

    args.hosts = [h for h in (args.hosts or "").split(",") if h]
    if args.worker != "all":
        if not args.worker.isdigit():
            error("--worker is a worker index or all")
        if b == "ssh" and int(args.worker) >= len(args.hosts):
            error(f"--worker {args.worker}: only {len(args.hosts)} hosts")
    args.extras = [e for e in (DEFAULT_EXTRAS[b] if args.extras is None else args.extras) if e]
    args.source = os.path.abspath(args.source)
    if b == "slurm":  # paths on the shared filesystem, read by SLURM itself (which expands no ~)
        args.run_dir = os.path.abspath(os.path.expanduser(args.run_dir))
        args.python = os.path.expanduser(args.python)
        if args.checkpoint_dir and "://" not in args.checkpoint_dir:
            args.checkpoint_dir = os.path.abspath(os.path.expanduser(args.checkpoint_dir))
    if args.checkpoint_dir is None:
        args.checkpoint_dir = args.run_dir.rstrip("/") + "/checkpoints"
    args.local_dir = args.local_dir or os.path.join("results", args.name)
    args.sbatch_file = args.sbatch_file or os.path.join(args.run_dir, f"{args.name}.sbatch")
    args.bundle = args.bundle or os.path.join(tempfile.gettempdir(), f"{args.name}-src.tar.gz")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else list(argv))
    runner = Runner(args.dry_run)
    backend = BACKENDS[args.backend](args, runner)
    try:
        if args.command == "run":
            run_all(backend, args, runner)
        elif args.command == "script":
            sys.stdout.write(backend.script())
        elif args.command == "launch":
            backend.launch()
        elif args.command == "logs":
            backend.logs(args.follow)
        else:
            getattr(backend, args.command)()
    except subprocess.CalledProcessError as err:
        runner.note(f"command failed (exit status {err.returncode}): {shlex.join(err.cmd)}")
        return err.returncode or 1
    except KeyboardInterrupt:
        runner.note("interrupted")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
