"""The tpu/ scripts: shellcheck, argument checks, help texts and the exact commands they run."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TPU = ROOT / "tpu"
SCRIPTS = ["create.sh", "setup.sh", "data.sh", "launch.sh", "logs.sh", "teardown.sh",
           "gpu_launch.sh"]
TARGET = ["--name", "pet-v4", "--zone", "us-central2-b"]
SSH = ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "pet-v4", "--zone=us-central2-b"]


@pytest.fixture(scope="module")
def fake_bin(tmp_path_factory) -> Path:
    """A PATH folder whose `gcloud` only records its arguments, one JSON list per call."""
    folder = tmp_path_factory.mktemp("bin")
    gcloud = folder / "gcloud"
    gcloud.write_text(f"#!{sys.executable}\nimport json, os, sys\n"
                      "with open(os.environ['GCLOUD_LOG'], 'a') as f:\n"
                      "    f.write(json.dumps(['gcloud'] + sys.argv[1:]) + '\\n')\n")
    gcloud.chmod(0o755)
    return folder


def run(script: str, *args: str, fake_bin: Path | None = None, tmp_path: Path | None = None,
        cwd: Path = ROOT) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if fake_bin is not None:
        env["PATH"] = f"{fake_bin}{os.pathsep}{env['PATH']}"
        env["GCLOUD_LOG"] = str(tmp_path / "gcloud.log")
    return subprocess.run(["bash", str(TPU / script), *args], capture_output=True, text=True,
                          env=env, cwd=cwd, stdin=subprocess.DEVNULL, timeout=60)


def dry_run(script: str, *args: str) -> list[list[str]]:
    result = run(script, "--dry-run", *args)
    assert result.returncode == 0, result.stderr
    return [shlex.split(line) for line in result.stdout.splitlines()]


def test_shellcheck_passes():
    shellcheck = Path(sys.executable).parent / "shellcheck"
    result = subprocess.run([str(shellcheck), "-x", *(str(TPU / s) for s in SCRIPTS),
                             str(TPU / "common.sh")], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


def _flags_parsed(script: str) -> set[str]:
    text = (TPU / script).read_text()
    if "common_flag" in text:
        text += (TPU / "common.sh").read_text()
    return set(re.findall(r"^\s+(--[a-z-]+)\)", text, flags=re.M))


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_documents_every_argument(script):
    result = run(script, "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"Usage: {script}")
    flags = _flags_parsed(script)
    assert "--dry-run" in flags and len(flags) >= 3
    for flag in flags:
        assert re.search(rf"^\s+{flag}\b", result.stdout, flags=re.M), f"{script}: {flag}"


@pytest.mark.parametrize("script, missing", [
    ("create.sh", "--name"), ("setup.sh", "--name"), ("data.sh", "--name"),
    ("launch.sh", "--name"), ("logs.sh", "--name"), ("teardown.sh", "--name"),
    ("gpu_launch.sh", "--config"),
])
def test_missing_arguments_are_refused(script, missing, fake_bin, tmp_path):
    result = run(script, fake_bin=fake_bin, tmp_path=tmp_path)
    assert result.returncode == 2
    assert f"missing required argument {missing}" in result.stderr
    assert f"Run '{script} --help'" in result.stderr
    assert not (tmp_path / "gcloud.log").exists()


@pytest.mark.parametrize("script, args, message", [
    ("create.sh", TARGET, "missing required argument --accelerator-type"),
    ("create.sh", [*TARGET, "--accelerator-type", "v9x"], "is not a TPU type"),
    ("create.sh", [*TARGET, "--accelerator-type", "v4-8", "--spot", "--preemptible"],
     "exclude each other"),
    ("create.sh", ["--name", "pet-v4", "--zone"], "--zone needs a value"),
    ("create.sh", ["--name", "Bad_Name", "--zone", "us-central2-b", "--accelerator-type",
                   "v4-8"], "is not a valid TPU name"),
    ("setup.sh", TARGET, "one of --repo URL or --source DIR"),
    ("setup.sh", [*TARGET, "--source", "/nonexistent"], "is not a jaxpet checkout"),
    ("data.sh", [*TARGET, "--dest", "data"], "missing required argument --src"),
    ("data.sh", [*TARGET, "--src", "/local/path", "--dest", "d"], "must be a gs://"),
    ("data.sh", [*TARGET, "--src", "gs://bkt/x", "--dest", "d", "--mode", "fuse"],
     "--mode must be copy or mount"),
    ("data.sh", [*TARGET, "--src", "gs://bkt/x", "--dest", "d", "--writable"],
     "--writable only applies to --mode mount"),
    ("launch.sh", [*TARGET, "--config", "c.yaml"], "missing required argument --output-dir"),
    ("launch.sh", [*TARGET, "--config", "c.yaml", "--output-dir", "runs/x"],
     "must be a gs:// URL or an absolute path"),
    ("launch.sh", [*TARGET, "--config", "c.yaml", "--output-dir", "gs://b/r", "--",
                   "mesh.fsdp"], "'mesh.fsdp' is not key=value"),
    ("launch.sh", [*TARGET, "mesh.fsdp=2"], "unknown argument 'mesh.fsdp=2'"),
    ("logs.sh", [*TARGET, "--worker", "first"], "--worker must be a number or 'all'"),
    ("teardown.sh", TARGET, "refusing to delete 'pet-v4' without --yes"),
    ("gpu_launch.sh", ["--config", "c.yaml", "--output-dir", "/r", "--num-hosts", "2",
                       "--gpus", "8"], "missing required argument --coordinator"),
    ("gpu_launch.sh", ["--config", "c.yaml", "--output-dir", "/r", "--num-hosts", "2",
                       "--host-index", "2", "--coordinator", "h:1", "--gpus", "8"],
     "--host-index must be a number in 0 .. 1"),
])
def test_bad_arguments_are_refused(script, args, message, fake_bin, tmp_path):
    result = run(script, *args, fake_bin=fake_bin, tmp_path=tmp_path)
    assert result.returncode == 2, result.stdout
    assert message in result.stderr
    assert not (tmp_path / "gcloud.log").exists()


def test_create_dry_run_and_real_run_agree(fake_bin, tmp_path):
    args = [*TARGET, "--accelerator-type", "v5e-8", "--project", "my-proj", "--spot"]
    expected = [["gcloud", "compute", "tpus", "tpu-vm", "create", "pet-v4",
                 "--zone=us-central2-b", "--project=my-proj", "--accelerator-type=v5litepod-8",
                 "--version=v2-alpha-tpuv5-lite", "--spot"]]
    assert dry_run("create.sh", *args) == expected
    result = run("create.sh", *args, fake_bin=fake_bin, tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr
    import json

    calls = [json.loads(line) for line in (tmp_path / "gcloud.log").read_text().splitlines()]
    assert calls == expected
    assert dry_run("create.sh", *TARGET, "--accelerator-type=v4-32", "--preemptible",
                   "--version=tpu-vm-v4-base") == [
        ["gcloud", "compute", "tpus", "tpu-vm", "create", "pet-v4", "--zone=us-central2-b",
         "--accelerator-type=v4-32", "--version=tpu-vm-v4-base", "--preemptible"]]


def test_setup_dry_run():
    commands = dry_run("setup.sh", *TARGET, "--repo", "https://github.com/org/jaxpet",
                       "--ref", "v1", "--extras", "tensorboard")
    install = ("cd jaxpet && python3 -m venv .venv && .venv/bin/pip install -q --upgrade pip"
               " && .venv/bin/pip install -q 'jax[tpu]>=0.10.2' -e '.[tensorboard]'"
               " && .venv/bin/python -c 'import jax; print(jax.process_index(), "
               "jax.local_device_count(), jax.devices()[0].device_kind)'")
    assert commands == [
        [*SSH, "--worker=all", "--command=if [ -d jaxpet/.git ]; then git -C jaxpet fetch "
         "--depth 1 origin v1 && git -C jaxpet checkout --force FETCH_HEAD; else git clone "
         "--depth 1 --branch v1 https://github.com/org/jaxpet jaxpet; fi"],
        [*SSH, "--worker=all", f"--command={install}"],
    ]
    commands = dry_run("setup.sh", *TARGET, "--source", str(ROOT), "--dir", "code/jaxpet")
    archive = commands[0][2]
    assert re.fullmatch(r".*/jaxpet-src\.\w+\.tar\.gz", archive)
    assert commands[:4] == [
        ["tar", "-czf", archive, "-C", str(ROOT), "--exclude=.git", "--exclude=.venv",
         "--exclude=runs", "--exclude=__pycache__", "."],
        ["gcloud", "compute", "tpus", "tpu-vm", "scp", archive, "pet-v4:jaxpet-src.tar.gz",
         "--zone=us-central2-b", "--worker=all"],
        ["rm", "-f", archive],
        [*SSH, "--worker=all", "--command=mkdir -p code/jaxpet && tar -xzf jaxpet-src.tar.gz "
         "-C code/jaxpet && rm jaxpet-src.tar.gz"],
    ]
    assert commands[4][-1].startswith("--command=cd code/jaxpet && python3 -m venv .venv")


def test_data_dry_run():
    assert dry_run("data.sh", *TARGET, "--src", "gs://bkt/pet/agnews/", "--dest",
                   "data/agnews") == [
        [*SSH, "--worker=all", "--command=mkdir -p data/agnews && gcloud storage rsync "
         "--recursive gs://bkt/pet/agnews data/agnews"]]
    mount = dry_run("data.sh", *TARGET, "--src=gs://bkt/pet/agnews", "--dest=/mnt/pet",
                    "--mode=mount")
    assert mount == [[*SSH, "--worker=all",
                      "--command=command -v gcsfuse >/dev/null || { echo 'gcsfuse is not "
                      "installed on this worker' >&2; exit 1; } && mkdir -p /mnt/pet && gcsfuse "
                      "-o ro --implicit-dirs --only-dir pet/agnews bkt /mnt/pet"]]
    assert dry_run("data.sh", *TARGET, "--src=gs://bkt", "--dest=/mnt/out", "--mode=mount",
                   "--writable")[0][-1].endswith(
        "&& mkdir -p /mnt/out && gcsfuse --implicit-dirs bkt /mnt/out")


def test_launch_dry_run_quotes_overrides_for_the_remote_shell():
    commands = dry_run("launch.sh", *TARGET, "--project", "p1", "--config",
                       "configs/agnews_pet.yaml", "--output-dir", "gs://b/runs/agnews/",
                       "--env", "XLA_FLAGS=--xla_a=1 --xla_b", "--", "mesh.fsdp=4",
                       "task.name=it's")
    assert len(commands) == 1
    *gcloud, remote = commands[0]
    assert gcloud == [*SSH, "--project=p1", "--worker=all"]
    assert remote.startswith("--command=cd jaxpet && mkdir -p logs && W=$(curl -sf ")
    remote_words = shlex.split(remote.split("|| exit 1;", 1)[1].split(" > ")[0])
    assert remote_words == [
        "JAXPET_DISTRIBUTED=1", "XLA_FLAGS=--xla_a=1 --xla_b", "nohup", ".venv/bin/python",
        "train.py", "--config", "configs/agnews_pet.yaml", "output_dir=gs://b/runs/agnews/",
        "mesh.fsdp=4", "task.name=it's"]
    assert "> logs/agnews-worker-$W.log 2>&1 < /dev/null &" in remote


def test_logs_and_teardown_dry_run():
    assert dry_run("logs.sh", *TARGET, "--worker", "all", "--run", "agnews", "--follow",
                   "--lines", "20") == [
        [*SSH, "--worker=all", "--command=tail -n 20 -F jaxpet/logs/agnews-*.log"]]
    assert dry_run("logs.sh", *TARGET) == [
        [*SSH, "--worker=0", "--command=tail -n 50 jaxpet/logs/*.log"]]
    assert dry_run("teardown.sh", *TARGET) == [
        ["gcloud", "compute", "tpus", "tpu-vm", "delete", "pet-v4", "--zone=us-central2-b",
         "--quiet"]]


def test_gpu_launch_dry_run_per_gpu():
    lines = run("gpu_launch.sh", "--config", "c.yaml", "--output-dir", "/shared/r1",
                "--num-hosts", "2", "--host-index", "1", "--coordinator", "10.0.0.2:1234",
                "--mode", "per-gpu", "--gpus", "2", "--config-keys", "--dry-run", "--",
                "mesh.fsdp=2").stdout.splitlines()
    assert lines[0] == "mkdir -p logs"
    for line, process_id, gpu in zip(lines[1:], (2, 3), (0, 1), strict=True):
        command, redirect = line.split(" > ")
        assert redirect == f"logs/r1-process-{process_id}.log 2>&1 &"
        assert shlex.split(command) == [
            "nohup", "env", "JAXPET_DISTRIBUTED=1", "JAX_COORDINATOR_ADDRESS=10.0.0.2:1234",
            "JAX_NUM_PROCESSES=4", f"JAX_PROCESS_ID={process_id}", f"JAX_LOCAL_DEVICE_IDS={gpu}",
            ".venv/bin/python", "train.py", "--config", "c.yaml", "output_dir=/shared/r1",
            "distributed.enabled=true", "distributed.coordinator_address=10.0.0.2:1234",
            "distributed.num_processes=4", f"distributed.process_id={process_id}",
            f"distributed.local_device_ids=[{gpu}]", "mesh.fsdp=2"]


def test_gpu_launch_runs_processes_with_the_distributed_environment(tmp_path):
    fake_python = tmp_path / "python"
    fake_python.write_text("#!/usr/bin/env bash\n"
                           'echo "$JAX_PROCESS_ID/$JAX_NUM_PROCESSES $JAX_LOCAL_DEVICE_IDS '
                           '$JAX_COORDINATOR_ADDRESS $JAXPET_DISTRIBUTED $*"\n'
                           'exit "$JAX_PROCESS_ID"\n')
    fake_python.chmod(0o755)
    common = ["--config", "c.yaml", "--output-dir", "/shared/run", "--python", str(fake_python),
              "--log-dir", str(tmp_path / "logs")]
    result = run("gpu_launch.sh", *common, "--gpus", "4", "--", "seed=1", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    log = (tmp_path / "logs" / "run-process-0.log").read_text()
    assert log == ("0/1 0,1,2,3 localhost:12355 1 train.py --config c.yaml "
                   "output_dir=/shared/run seed=1\n")
    # per-gpu: processes 0 and 1 on this host; process 1 exits 1, so the script fails.
    result = run("gpu_launch.sh", *common, "--gpus", "2", "--mode", "per-gpu", cwd=tmp_path)
    assert result.returncode == 1
    assert (tmp_path / "logs" / "run-process-1.log").read_text().startswith(
        "1/2 1 localhost:12355 1 ")
