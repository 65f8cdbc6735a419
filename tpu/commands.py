"""The exact gcloud / xpk command lines we run (argv lists), and the shell snippets run on TPU workers.

Pure functions: nothing here runs anything, so `--dry-run` prints precisely what a real run executes.
On every worker, files live under ~/moe-jax: venv/ (Python + our wheel + jax[tpu]), logs/RUN.log,
logs/RUN.exit (the train command's exit code), train.log (-> the current run's log), train.pid.
"""

from __future__ import annotations

import shlex
from importlib import metadata

from moe_jax import __version__
from moe_jax.tpu.accelerators import Accelerator
from moe_jax.tpu.settings import Settings, all_labels

WORKER_PYTHON = "python3.11"  # pyproject's requires-python; TPU VM images ship 3.10, so apt installs 3.11
HOME_DIR = "moe-jax"  # on each worker, relative to the ssh login directory
VENV = f"{HOME_DIR}/venv"
QUEUED = ("compute", "tpus", "queued-resources")
TPU_VM = ("compute", "tpus", "tpu-vm")


def double_quote(text: str) -> str:
    """Quote for a POSIX shell with double quotes, so the snippet itself fits in single quotes."""
    escaped = "".join("\\" + c if c in '\\"$`' else c for c in text)
    return f'"{escaped}"'


def render(argv: list[str]) -> str:
    """Shell-quoted command line; a '--flag=value' keeps the flag outside the quotes (--command='…')."""
    parts = []
    for arg in argv:
        flag, sep, value = arg.partition("=")
        simple_flag = arg.startswith("--") and sep and flag[2:].replace("-", "").isalnum()
        parts.append(flag + "=" + shlex.quote(value) if simple_flag and shlex.quote(arg) != arg else shlex.quote(arg))
    return " ".join(parts)


def wheel_name() -> str:
    """File name of the wheel `pip wheel .` builds for this version (pure Python: py3-none-any)."""
    return f"moe_jax-{__version__}-py3-none-any.whl"


def _where(s: Settings) -> list[str]:
    return [f"--zone={s.zone}", f"--project={s.project}"]


def _capacity_flags(s: Settings) -> list[str]:
    """on-demand: none; spot: --spot; reserved: --reserved; flex: flex-start provisioning (alpha API)."""
    return {"on-demand": [], "spot": ["--spot"], "reserved": ["--reserved"],
            "flex": ["--provisioning-model=flex-start", f"--max-run-duration={s.max_run_duration}"]}[s.capacity]


def create_queued_resource(name: str, s: Settings, accelerator: Accelerator) -> list[str]:
    """Queue a request for one slice; its TPU VM node gets the same name (`--node-id`)."""
    gcloud = ["gcloud", "alpha"] if s.capacity == "flex" else ["gcloud"]  # flex-start is alpha-only
    labels = ",".join(f"{k}={v}" for k, v in all_labels(s).items())
    return [*gcloud, *QUEUED, "create", name, f"--node-id={name}", f"--accelerator-type={accelerator.name}",
            f"--runtime-version={s.runtime_version}", *_where(s), *_capacity_flags(s), f"--labels={labels}"]


def describe_queued_resource(name: str, s: Settings) -> list[str]:
    return ["gcloud", *QUEUED, "describe", name, *_where(s), "--format=json"]


def delete_queued_resource(name: str, s: Settings) -> list[str]:
    """--force also deletes the slice's TPU VMs; --quiet skips the y/N prompt."""
    return ["gcloud", *QUEUED, "delete", name, *_where(s), "--force", "--quiet"]


def ssh(name: str, s: Settings, worker: str, remote: str) -> list[str]:
    """Run the shell snippet `remote` on one worker ('0') or on every worker ('all') of the slice."""
    return ["gcloud", *TPU_VM, "ssh", name, *_where(s), f"--worker={worker}", f"--command={remote}"]


def scp(name: str, s: Settings, local: str, remote: str) -> list[str]:
    """Copy a local file to `remote` (relative to the login directory) on every worker."""
    return ["gcloud", *TPU_VM, "scp", local, f"{name}:{remote}", *_where(s), "--worker=all"]


def build_wheel(source: str, out_dir: str) -> list[str]:
    return ["python", "-m", "pip", "wheel", "--no-deps", source, "-w", out_dir]


def pip_install(pip: str, wheel: str) -> str:
    """Install our wheel with jax[tpu] at the jax version our wheel pins."""
    return f"{pip} install -q {shlex.quote(wheel)} {double_quote('jax[tpu]==' + metadata.version('jax'))}"


def install_on_worker(wheel: str) -> str:
    """A Python 3.11 venv holding our wheel and jax[tpu]."""
    return (f"sudo apt-get update -qq && sudo apt-get install -y -qq {WORKER_PYTHON} {WORKER_PYTHON}-venv && "
            f"{WORKER_PYTHON} -m venv {VENV} && {pip_install(f'{VENV}/bin/pip', wheel)}")


def train_argv(train_args: list[str], workdir: str | None, program: str = f"{VENV}/bin/moe-jax") -> list[str]:
    """`moe-jax train --multi-host ARGS --workdir WORKDIR`; ARGS = ['--config', SPEC, '--config.KEY=VALUE', …]
    (with `workdir` None, ARGS name it already, as a sweep run's do). --multi-host: every worker calls
    jax.distributed.initialize() and JAX finds the others (TPU VM metadata or GKE), env var or not."""
    return [program, "train", "--multi-host", *train_args, *(["--workdir", workdir] if workdir else [])]


def start_in_background(run: str, train: list[str]) -> str:
    """Start `train` detached (own session, survives the ssh logout), logging to logs/RUN.log.

    Its exit code lands in logs/RUN.exit; train.pid holds the session id (for `stop`); train.log links
    to the log (for `logs`). `train` carries --multi-host (see train_argv).
    """
    log, code = f"{HOME_DIR}/logs/{run}.log", f"{HOME_DIR}/logs/{run}.exit"
    job = double_quote(f"{shlex.join(train)}; echo $? > {code}")
    return (f"mkdir -p {HOME_DIR}/logs && rm -f {code} && ln -sfn logs/{run}.log {HOME_DIR}/train.log && "
            f"(setsid nohup sh -c {job} > {log} 2>&1 < /dev/null & echo $! > {HOME_DIR}/train.pid)")


def probe_run(run: str) -> str:
    """Prints the run's exit code if it ended, 'running' while its process lives, 'gone' otherwise."""
    code = f"{HOME_DIR}/logs/{run}.exit"
    return (f"if [ -f {code} ]; then cat {code}; "
            f"elif kill -0 \"$(cat {HOME_DIR}/train.pid 2>/dev/null)\" 2>/dev/null; then echo running; "
            f"else echo gone; fi")


def tail_log(lines: int, follow: bool) -> str:
    return f"tail -n {lines} {'-F ' if follow else ''}{HOME_DIR}/train.log"


def stop_training() -> str:
    """SIGTERM to the run's whole process group: the train loop saves a checkpoint and exits (143)."""
    return f'kill -TERM -- "-$(cat {HOME_DIR}/train.pid)"'


def xpk_create(workload: str, s: Settings, accelerator: Accelerator, max_restarts: int,
               image: list[str], command: str) -> list[str]:
    """One workload on one slice of the GKE cluster; JobSet restarts it up to `max_restarts` times."""
    return ["xpk", "workload", "create", f"--cluster={s.cluster}", f"--workload={workload}",
            f"--tpu-type={accelerator.name}", "--num-slices=1", f"--max-restarts={max_restarts}",
            f"--project={s.project}", f"--zone={s.zone}", *image, f"--command={command}"]


def xpk_list(s: Settings) -> list[str]:
    return ["xpk", "workload", "list", f"--cluster={s.cluster}", f"--project={s.project}", f"--zone={s.zone}"]


def xpk_delete(workload: str, s: Settings) -> list[str]:
    return ["xpk", "workload", "delete", f"--cluster={s.cluster}", f"--workload={workload}",
            f"--project={s.project}", f"--zone={s.zone}", "--force"]
