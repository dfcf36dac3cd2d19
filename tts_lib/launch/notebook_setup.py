"""Jupyter for this clone: python -m tts_lib notebook-setup [--user] [--name NAME] [--env KEY=VALUE ...]

Two things a person needs before opening `notebooks/finetune.ipynb` in their own JupyterLab:

1. The kernel the notebooks name, `tts_lib` ("Python (tts_lib)"), running this environment's Python. By
   default it is installed into this environment (`sys.prefix`), where only a JupyterLab started from this
   environment looks first: two clones with their own environments each get their own `tts_lib` kernel and
   never overwrite each other's, and the notebooks' kernelspec stays the same in every clone. `--user`
   installs it for the whole account instead (setup.sh does, because a cloud instance's JupyterLab runs from
   another environment); an existing user kernel of that name that runs another Python is replaced, and
   this says so (`--name` keeps both, then pick the kernel in JupyterLab's Kernel menu).
2. A git filter (nbstripout) for `*.ipynb` in this clone, so that saving a notebook after Run All never puts
   its outputs (audio, plots, logs) into a commit, and autostash for `git pull`, so that a notebook saved with
   outputs does not stop a pull (the new notebook arrives; the outputs stay in the run folders).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

KERNEL_NAME = "tts_lib"  # the kernelspec name the notebooks carry
# Stripped besides outputs: JupyterLab rewrites language_info (with the Python version) on every save.
STRIP_KEYS = "metadata.language_info"
DISPLAY_NAME = "Python (tts_lib)"  # the same in every clone: JupyterLab writes it into a saved notebook


def install_kernel(
    name: str = KERNEL_NAME, user: bool = False, prefix: str | None = None, env: dict[str, str] | None = None
) -> Path:
    """Install the kernelspec for this Python; returns its folder. `env` goes into kernel.json (paths only:
    never a token, which reaches the kernel through the environment Jupyter itself was started with)."""
    from ipykernel.kernelspec import install

    if user:
        previous = _kernel_python(name)
        if previous is not None and Path(previous) != Path(sys.executable):
            print(f"the user kernel {name!r} ran {previous}; it now runs {sys.executable} "
                  f"(to keep both, run this again with --name another_name)")  # fmt: skip
    folder = Path(install(kernel_name=name, display_name=DISPLAY_NAME, user=user,
                          prefix=None if user else (prefix or sys.prefix)))  # fmt: skip
    spec_file = folder / "kernel.json"
    spec = json.loads(spec_file.read_text())
    # ipykernel_launcher's own warnings (e.g. "running over TCP without encryption": the kernel and its server are
    # on one machine) are noise in a papermill log; errors still show.
    spec["argv"] = [*spec["argv"], "--IPKernelApp.log_level=ERROR"]
    if env:
        spec["env"] = {**spec.get("env", {}), **env}
    spec_file.write_text(json.dumps(spec, indent=1))
    return folder


def _kernel_python(name: str) -> str | None:
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        return KernelSpecManager().get_kernel_spec(name).argv[0]
    except NoSuchKernel:
        return None


def install_git_filter(repo: Path) -> bool:
    """nbstripout's clean filter in `repo`'s .git/config (this Python runs it); False when `repo` is not a git
    checkout (a downloaded archive has nothing to protect)."""
    inside = subprocess.run(["git", "-C", str(repo), "rev-parse", "--git-dir"], capture_output=True, text=True)
    if inside.returncode != 0:
        return False
    subprocess.run([sys.executable, "-m", "nbstripout", "--install"], cwd=repo, check=True)
    subprocess.run(["git", "-C", str(repo), "config", "filter.nbstripout.extrakeys", STRIP_KEYS], check=True)
    # A saved notebook differs from the commit in size, so git calls it modified (without running the filter) and
    # `git pull` refuses to touch it. Stashing around a pull lets the pull through: the stash holds the filtered
    # notebook, which has no changes, so the new notebook arrives (the outputs stay in the run folders).
    for key in ("merge.autoStash", "rebase.autoStash"):
        subprocess.run(["git", "-C", str(repo), "config", key, "true"], check=True)
    return True


def run(args: argparse.Namespace) -> int:
    from tts_lib.launch.bundle import root_or_cwd

    env = dict(item.split("=", 1) for item in args.env)
    folder = install_kernel(args.name, user=args.user, prefix=args.prefix, env=env)
    where = "for this account" if args.user else f"in this environment ({args.prefix or sys.prefix})"
    print(f"Jupyter kernel {args.name!r} ({DISPLAY_NAME}) installed {where}: {folder}")
    root = root_or_cwd()
    if install_git_filter(root):
        print(f"git filter nbstripout installed in {root}: notebook outputs stay out of commits")
    else:
        print(f"{root} is not a git checkout: no git filter installed")
    if args.name != KERNEL_NAME:
        print(f"the notebooks name the kernel {KERNEL_NAME!r}: pick {args.name!r} in JupyterLab's Kernel menu")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("notebook-setup", help="Jupyter kernel for this clone and a git filter for notebook outputs")
    p.add_argument("--user", action="store_true", help="install the kernel for this account (setup.sh does)")
    p.add_argument("--name", default=KERNEL_NAME, help=f"kernel name (default {KERNEL_NAME}, as the notebooks name)")
    p.add_argument("--prefix", help="install the kernel under this prefix (default: this environment)")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="set in the kernel's environment")
    p.set_defaults(func=run)
