"""Helpers for tests/test_browser.py: a copy of the repository, JupyterLab, headless Chromium and what a
user does in JupyterLab 4 (menus, Run All, Save), found by the DOM a user sees. No test in here.

Selectors are JupyterLab 4's: menu bar `.lm-MenuBar-itemLabel`, menu items `.lm-Menu-itemLabel`, code cells
`.jp-CodeCell` with their prompt `.jp-InputPrompt` ("[3]:", "[*]:", "[ ]:"), dialogs `.jp-Dialog`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
INSTALL_HINT = "apt-get install -y chromium chromium-driver"
CHROMIUM_FLAGS = [
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
    "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--autoplay-policy=no-user-gesture-required", "--window-size=1400,1000",
]  # fmt: skip


def copy_repository(root: Path, dest: Path) -> Path:
    """Copies the files git would commit (tracked plus untracked-not-ignored: uncommitted work included) and
    nothing else: no .venv, runs/, checkpoints/ or caches, as on a fresh clone."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=root, capture_output=True, check=True,
    ).stdout.decode().split("\0")  # fmt: skip
    for name in filter(None, listed):
        source = root / name
        if not source.is_file():  # deleted in the working tree but still in the index
            continue
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, dest / name)
    return dest


def user_env(copy: Path, home: Path) -> dict[str, str]:
    """The environment of setup.sh and JupyterLab: a home folder of our own (the kernel spec goes there, the
    real user's Jupyter config is not read), no hub, and the copy's tts_lib first on the path (the venv's
    editable install points at the working tree, not at the copy)."""
    return {
        "PATH": os.environ["PATH"],  # jupyter and the kernel are started by absolute path: no venv activated
        "HOME": str(home),
        "JUPYTER_CONFIG_DIR": str(home / ".jupyter"),
        "JUPYTER_RUNTIME_DIR": str(home / ".local/share/jupyter/runtime"),
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": str(copy),
        "LANG": "C.UTF-8",
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class JupyterLab:
    """`jupyter lab` from this interpreter's environment, serving `root`; its output goes to `log`."""

    def __init__(self, root: Path, env: dict[str, str], log: Path, token: str):
        self.root, self.log, self.token = root, log, token
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command = [
            str(Path(sys.prefix) / "bin" / "jupyter"), "lab", "--no-browser", f"--ServerApp.root_dir={root}",
            "--port", str(self.port), "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
            "--ip", "127.0.0.1",
        ]  # fmt: skip
        if os.geteuid() == 0:  # CI containers run as root; jupyter refuses that without this flag
            command.append("--allow-root")
        self._log_file = log.open("w")
        self.process = subprocess.Popen(command, cwd=root, env=env, stdout=self._log_file, stderr=subprocess.STDOUT)

    def api(self, path: str):
        request = urllib.request.Request(self.url + path, headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"jupyter lab exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                self.api("/api/status")
                return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.5)
        raise TimeoutError(f"jupyter lab did not answer /api/status in {timeout:.0f} s:\n{self.log_tail()}")

    def kernel_of(self, notebook: str) -> dict | None:
        """The kernel of the session of `notebook` (a path under root), as /api/sessions reports it."""
        for session in self.api("/api/sessions"):
            if session.get("path") == notebook and session.get("kernel"):
                return session["kernel"]
        return None

    def page(self, path: str) -> str:
        return f"{self.url}/lab/tree/{path}?token={self.token}"

    def log_tail(self, chars: int = 3000) -> str:
        self._log_file.flush()
        return self.log.read_text(errors="replace")[-chars:]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=20)
        self._log_file.close()


def chromium(user_data_dir: Path) -> webdriver.Chrome:
    """Debian's headless Chromium through Debian's chromedriver: with both paths given, Selenium Manager is not
    run, so nothing is downloaded."""
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={user_data_dir}")
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    driver.set_script_timeout(60)
    return driver


def wait_for(condition, timeout: float, what: str, interval: float = 0.5):
    """Polls `condition()` until it returns something truthy (returned); TimeoutError naming `what` if not."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def visible(driver, css: str) -> list:
    try:
        return [e for e in driver.find_elements(By.CSS_SELECTOR, css) if e.is_displayed()]
    except WebDriverException:  # the element went away between find and is_displayed
        return []


def dialog_text(driver) -> str | None:
    """The text of an open JupyterLab dialog (e.g. "Select Kernel"), or None."""
    dialogs = visible(driver, ".jp-Dialog")
    return dialogs[0].text if dialogs else None


def click_menu(driver, menu: str, item: str) -> None:
    """Opens `menu` in the menu bar and clicks `item` in it, as a user does with the mouse."""
    [label] = [e for e in visible(driver, ".lm-MenuBar-itemLabel") if e.text.strip() == menu] or [None]
    if label is None:
        raise AssertionError(f"no {menu!r} menu in JupyterLab's menu bar")
    label.click()
    entry = wait_for(
        lambda: [e for e in visible(driver, ".lm-Menu-itemLabel") if e.text.strip() == item], 10, f"menu item {item!r}"
    )[0]
    entry.click()


def prompts(driver) -> list[str]:
    """The input prompt of every code cell of the open notebook, in order: "3", "*" or "" (never run)."""
    texts = driver.execute_script(
        "return Array.from(document.querySelectorAll('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-CodeCell'))"
        ".map(c => { const p = c.querySelector('.jp-InputPrompt'); return p ? p.textContent : ''; });"
    )
    return [re.sub(r"[\[\]:\s]", "", t) for t in texts]


def scroll_to_output(driver, index: int) -> None:
    """Scrolls the output of cell `index` (markdown cells count) of the open notebook into view, e.g. to show a
    traceback in a screenshot."""
    driver.execute_script(
        "const cells = document.querySelectorAll('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook-cell');"
        "const cell = cells[arguments[0]];"
        "if (cell) (cell.querySelector('.jp-OutputArea') || cell).scrollIntoView({block: 'start'});",
        index,
    )
    time.sleep(1)  # cells outside the viewport are rendered lazily


def audio_report(driver, selector: str = "audio", timeout_ms: int = 20000) -> list[dict]:
    """Loads and plays every <audio> matching `selector` in the current document (or frame), as a user's click on
    play does (a player with preload="none" fetches nothing before that). One dict per player: src (cut short),
    event (what ended the wait: loadedmetadata, error or timeout), duration, error, played (True, or why play()
    failed) and advanced (whether the playback position moved)."""
    script = """
    const [selector, timeoutMs, done] = [arguments[0], arguments[1], arguments[arguments.length - 1]];
    const one = (a) => new Promise((resolve) => {
      const finish = async (event) => {
        let played = null, advanced = false;
        if (event === 'loadedmetadata') {
          try {
            await a.play();
            played = true;
            const start = a.currentTime;
            await new Promise((r) => setTimeout(r, 400));
            advanced = a.currentTime > start;
            a.pause();
          } catch (e) { played = `${e.name}: ${e.message}`; }
        }
        resolve({src: (a.currentSrc || a.getAttribute('src') || '').slice(0, 160), event, duration: a.duration,
                 error: a.error ? `${a.error.code} ${a.error.message}` : null, played, advanced});
      };
      if (a.readyState >= 1) { finish('loadedmetadata'); return; }
      a.addEventListener('loadedmetadata', () => finish('loadedmetadata'), {once: true});
      a.addEventListener('error', () => finish('error'), {once: true});
      setTimeout(() => finish('timeout'), timeoutMs);
      a.preload = 'auto';
      a.load();
    });
    Promise.all(Array.from(document.querySelectorAll(selector)).map(one)).then(done, (e) => done(String(e)));
    """
    return driver.execute_async_script(script, selector, timeout_ms)


def bad_players(report: list[dict]) -> list[dict]:
    return [r for r in report if not (r["event"] == "loadedmetadata" and r["duration"] > 0 and r["error"] is None
                                      and r["played"] is True)]  # fmt: skip


def save_artifacts(driver, lab: JupyterLab | None, folder: Path, name: str) -> None:
    """Screenshots and HTML of every open tab (and of the frame the driver was in), JupyterLab's log: what is
    needed to see why a browser test failed without running it again. Never raises."""
    folder.mkdir(parents=True, exist_ok=True)
    if driver is not None:
        try:
            (folder / f"{name}-frame.html").write_text(driver.page_source)  # the iframe, when in one
            driver.switch_to.default_content()
            for i, handle in enumerate(driver.window_handles):
                driver.switch_to.window(handle)
                driver.save_screenshot(str(folder / f"{name}-tab{i}.png"))
                (folder / f"{name}-tab{i}.html").write_text(driver.page_source)
        except WebDriverException as e:
            (folder / f"{name}-browser-error.txt").write_text(str(e))
    if lab is not None:
        try:
            lab._log_file.flush()
            shutil.copy(lab.log, folder / "jupyterlab.log")
        except OSError:
            pass
