"""keel's runtime adapter for the WASI test suite's runner (wasi_test_runner).

The runner loads this file as a module and asks it for the command line of
each test. keel's `run` takes its options before the module and hands the
guest everything after `--`, so the guest's arguments can never be taken
for keel's own options.

Environment: KEEL (the keel binary; default `keel` on PATH), KEEL_ENGINE
(`keel run --engine`; unset: keel's default engine).
"""
import os
import shlex
import subprocess
from typing import Dict, List, Optional, Tuple

KEEL = shlex.split(os.getenv("KEEL", "keel"))
ENGINE = os.getenv("KEEL_ENGINE", "")


def get_name() -> str:
    return "keel"


def get_version() -> str:
    result = subprocess.run(KEEL + ["--version"], encoding="UTF-8",
                            capture_output=True, check=True)
    # "keel 0.1.0 (engines: ...)"
    return result.stdout.split()[1]


def get_wasi_versions() -> List[str]:
    return ["wasm32-wasip1"]


def get_wasi_worlds() -> List[str]:
    return ["wasi:cli/command"]


def get_timeout_seconds() -> float:
    # The runner's default is 5 s a test; a loaded 2-core machine building
    # beside it can take longer to start a process, and a hang still ends.
    return 120.0


def compute_argv(test_path: str,
                 args_env_root: Tuple[List[str], Dict[str, str], Optional[str]],
                 proposals: List[str],
                 wasi_world: str,
                 wasi_version: str) -> List[str]:
    del proposals, wasi_world, wasi_version  # preview1 command modules only
    args, env, root = args_env_root
    argv = KEEL + ["run"]
    if ENGINE:
        argv += ["--engine", ENGINE]
    for key, value in env.items():
        argv += ["--env", f"{key}={value}"]
    if root:
        argv += ["--dir", f"{root}::/"]
    return argv + [test_path, "--"] + list(args)
