"""Run All of notebooks/finetune.ipynb in a real JupyterLab, in headless Chromium, as a new user does it:

    .venv/bin/python -m pytest tests/test_browser.py -v

A copy of the repository (the files git would commit, uncommitted work included) gets `bash setup.sh --demo`;
JupyterLab serves the copy; the browser opens the notebook, which must find its `tts_lib` kernel without asking,
and clicks Run > Run All Cells with every parameter as it is. Then: every code cell ran without an error (read
from the saved notebook), results.json and the package it names exist, and every audio player loads and plays:
in the notebook, in runs/v1/listen/players.html opened in JupyterLab's HTML viewer, and from disk (file://).

Needs Debian's chromium and chromium-driver (apt-get install -y chromium chromium-driver): skipped without them,
except when CI is set. On a failure, screenshots, the pages' HTML and JupyterLab's log are written to
$TTS_LIB_BROWSER_ARTIFACTS (default: the test's tmp folder/artifacts), named in the failure message;
TTS_LIB_BROWSER_SCREENSHOTS=1 keeps them for every step of a passing run too.
Three to five minutes on two CPU cores with tiny-demo; Run All alone may take up to RUN_ALL_TIMEOUT.
"""

import contextlib
import json
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

import pytest

try:
    import browser_driver as bd
except ImportError as error:  # selenium comes with the test extra: pip install -e ".[test]"
    bd, IMPORT_ERROR = None, error

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = "notebooks/finetune.ipynb"
VERSION = "runs/v1"  # the notebook's default output_dir
RUN_ALL_TIMEOUT = 12 * 60  # seconds; the default parameters train a little and render the listening samples

pytestmark = [pytest.mark.slow, pytest.mark.browser]


def unavailable(reason: str) -> None:
    """Skips locally; fails on CI, which must run this test."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set: the browser test must run)", pytrace=False)
    pytest.skip(reason)


def expect(ok, message: str) -> None:
    """An assert whose message says it all: pytest does not restate the expression under it."""
    if not ok:
        raise AssertionError(message)


@pytest.fixture
def artifacts(tmp_path) -> Path:
    return Path(os.environ.get("TTS_LIB_BROWSER_ARTIFACTS") or tmp_path / "artifacts")


@pytest.fixture
def sandbox(tmp_path):
    """(copy of the repository, its home folder) after `bash setup.sh --demo`, as on a fresh instance."""
    if bd is None:
        unavailable(f"selenium is not installed ({IMPORT_ERROR}): pip install -e '.[test]'")
    missing = [str(p) for p in (bd.CHROMIUM, bd.CHROMEDRIVER) if not p.is_file()]
    if missing:
        unavailable(f"{' and '.join(missing)} not found: {bd.INSTALL_HINT}")
    copy = bd.copy_repository(ROOT, tmp_path / "repo")
    home = tmp_path / "home"
    home.mkdir()
    env = {**bd.user_env(copy, home), "SETUP_SKIP_INSTALL": "1", "VENV": sys.prefix}
    setup = subprocess.run(
        ["bash", "setup.sh", "--demo"], cwd=copy, env=env, capture_output=True, text=True, timeout=600
    )
    expect(setup.returncode == 0, f"setup.sh --demo failed:\n{setup.stdout[-3000:]}\n{setup.stderr[-3000:]}")
    expect((copy / ".setup-ready").is_file(), f"setup.sh --demo wrote no .setup-ready:\n{setup.stdout[-3000:]}")
    return copy, home


@pytest.fixture
def lab(sandbox, tmp_path):
    copy, home = sandbox
    server = bd.JupyterLab(copy, bd.user_env(copy, home), tmp_path / "jupyterlab.log", secrets.token_hex(16))
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


@pytest.fixture
def browser(lab, tmp_path):
    driver = bd.chromium(tmp_path / "chromium-profile")
    try:
        yield driver
    finally:
        driver.quit()


@contextlib.contextmanager
def artifacts_on_failure(driver, lab, folder: Path, step: str):
    """Turns any failure inside into an AssertionError naming `step` and the folder of screenshots. With
    TTS_LIB_BROWSER_SCREENSHOTS=1 every step is kept, passed or not: to look at what a user sees."""
    try:
        yield
    except Exception as e:
        bd.save_artifacts(driver, lab, folder, step.replace(" ", "-"))
        raise AssertionError(f"{step}: {e}\n\nscreenshots, page HTML and the JupyterLab log: {folder}") from e
    if os.environ.get("TTS_LIB_BROWSER_SCREENSHOTS"):
        bd.save_artifacts(driver, lab, folder, step.replace(" ", "-"))


def open_notebook(driver, lab, code_cells: int) -> None:
    """Opens the notebook and waits for its kernel: a "Select Kernel" dialog means the kernel spec the notebook
    names (tts_lib, which setup.sh registers) was not found, which a new user cannot be expected to fix."""
    driver.get(lab.page(NOTEBOOK))

    def kernel_ready():
        text = bd.dialog_text(driver)
        if text:
            raise AssertionError(f"JupyterLab asked instead of starting the notebook's kernel: {text!r}")
        kernel = lab.kernel_of(NOTEBOOK)
        return (kernel and kernel["execution_state"] == "idle" and len(bd.prompts(driver)) == code_cells
                and bd.visible(driver, '.jp-Notebook-ExecutionIndicator[data-status="idle"]') and kernel)  # fmt: skip

    kernel = bd.wait_for(kernel_ready, 120, "the notebook and an idle kernel")
    expect(kernel["name"] == "tts_lib", f"the notebook runs on kernel {kernel['name']!r}, not tts_lib")
    time.sleep(2)  # a dialog opened right after the kernel started (e.g. a kernel error) shows up by then
    expect(not bd.dialog_text(driver), f"JupyterLab shows a dialog: {bd.dialog_text(driver)!r}")


def wait_run_over(driver, lab) -> list[str]:
    """Waits until Run All is over: nothing queued ("[*]") and the kernel idle, twice in a row. JupyterLab stops
    Run All at the first error and clears the queued prompts, so this also ends the wait after an error.
    Returns the prompts."""
    calm = 0

    def over():
        nonlocal calm
        text = bd.dialog_text(driver)
        if text:  # e.g. "Kernel Restarting": the kernel died
            raise AssertionError(f"JupyterLab showed a dialog during Run All: {text!r}")
        kernel = lab.kernel_of(NOTEBOOK) or {}
        if kernel.get("execution_state") == "dead":
            raise AssertionError("the kernel died during Run All")
        prompts = bd.prompts(driver)
        started = any(p.isdigit() for p in prompts)
        calm = calm + 1 if started and "*" not in prompts and kernel.get("execution_state") == "idle" else 0
        return prompts if calm >= 2 else None

    return bd.wait_for(over, RUN_ALL_TIMEOUT, "Run All to finish", interval=2)


def save_notebook(driver, path: Path) -> dict:
    """File > Save Notebook; returns the notebook as saved once the file on disk has changed."""
    before = path.stat().st_mtime_ns
    bd.click_menu(driver, "File", "Save Notebook")
    bd.wait_for(lambda: path.stat().st_mtime_ns != before, 30, f"{path} to be saved")
    return bd.wait_for(lambda: _read_json(path), 10, f"{path} to be complete")


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except ValueError:  # caught mid-write
        return None


def run_problems(notebook: dict) -> list[tuple[int, str]]:
    """What went wrong in a saved notebook, as (cell index, text): each error output with the head of its cell,
    or else the code cells that never ran."""
    errors, not_run = [], []
    for index, cell in enumerate(notebook["cells"]):
        if cell["cell_type"] != "code":
            continue
        head = "".join(cell["source"]).strip().splitlines()[:3] or ["(empty)"]
        where = f"cell {index} (In [{cell.get('execution_count') or ' '}])"
        for output in cell.get("outputs", []):
            if output["output_type"] == "error":
                source = "\n    ".join(head)
                errors.append((index, f"{where} raised {output['ename']}: {output['evalue']}\n    {source}"))
        if cell.get("execution_count") is None:
            not_run.append((index, f"{where} did not run: {head[0]}"))
    return errors or not_run


def check_players(driver, lab, where: str, selector: str = "audio") -> None:
    report = bd.audio_report(driver, selector)
    expect(report, f"{where}: no <audio> player found")
    bad = bd.bad_players(report)
    if bad:  # a file refused (403) or missing (404) shows in the server's log; the player says only "error"
        log = lab.log_tail(100_000).splitlines()
        refused = [line for line in log if " GET /files/" in line and (" 403 " in line or " 404 " in line)]
        raise AssertionError(f"{where}: {len(bad)} of {len(report)} players do not play: {json.dumps(bad, indent=1)}"
                             + "\nJupyterLab's log:\n" + "\n".join(refused[-10:]))  # fmt: skip


def test_run_all_in_jupyterlab_as_a_new_user(sandbox, lab, browser, artifacts):
    copy, _ = sandbox
    notebook_file = copy / NOTEBOOK
    code_cells = sum(c["cell_type"] == "code" for c in json.loads(notebook_file.read_text())["cells"])

    with artifacts_on_failure(browser, lab, artifacts, "opening the notebook"):
        open_notebook(browser, lab, code_cells)

    with artifacts_on_failure(browser, lab, artifacts, "Run All"):
        bd.click_menu(browser, "Run", "Run All Cells")  # with every parameter as it is
        wait_run_over(browser, lab)
        saved = save_notebook(browser, notebook_file)
        problems = run_problems(saved)
        if problems:
            bd.scroll_to_output(browser, problems[0][0])  # the screenshot shows the first traceback
            raise AssertionError("Run All did not finish:\n" + "\n".join(text for _, text in problems))
        bd.scroll_to_output(browser, 3)  # the first outputs: the settings and where they came from (screenshots)

    with artifacts_on_failure(browser, lab, artifacts, "checking the run's files"):
        version = copy / VERSION
        results = json.loads((version / "results.json").read_text())
        package = Path(results["package"] or "")
        package = package if package.is_absolute() else version / package  # / keeps an absolute path too
        expect(
            results["package"] and package.is_file(),
            f"results.json names the package {results['package']!r}, which is not there",
        )

    with artifacts_on_failure(browser, lab, artifacts, "players in the notebook"):
        check_players(browser, lab, "the notebook's outputs", ".jp-NotebookPanel .jp-OutputArea-output audio")
        browser.execute_script("document.querySelector('.jp-OutputArea-output audio').scrollIntoView()")

    with artifacts_on_failure(browser, lab, artifacts, "players.html in JupyterLab"):
        browser.get(lab.page(f"{VERSION}/listen/players.html"))
        frame = bd.wait_for(lambda: bd.visible(browser, ".jp-HTMLViewer iframe"), 60, "JupyterLab's HTML viewer")[0]
        # The viewer's iframe is sandboxed without scripts until the user clicks "Trust HTML" (the native players
        # work either way, but checking them takes a script): click it, as a user would, and wait for the reload.
        if "allow-scripts" not in (frame.get_attribute("sandbox") or ""):
            trust = bd.visible(browser, '.jp-Document .jp-Toolbar [aria-label="Trust HTML"]')
            expect(trust, "the HTML viewer has no Trust HTML button")
            trust[0].click()
        frame = bd.wait_for(
            lambda: [f for f in bd.visible(browser, ".jp-HTMLViewer iframe")
                     if "allow-scripts" in (f.get_attribute("sandbox") or "")],
            30, "the HTML viewer to allow scripts after Trust HTML",
        )[0]  # fmt: skip
        browser.switch_to.frame(frame)
        check_players(browser, lab, "players.html in JupyterLab's HTML viewer")
        browser.switch_to.default_content()

    with artifacts_on_failure(browser, lab, artifacts, "players.html from disk"):
        browser.get((copy / VERSION / "listen" / "players.html").as_uri())
        check_players(browser, lab, "players.html opened from disk")
