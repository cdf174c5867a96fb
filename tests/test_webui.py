"""The Gradio web UI in a real browser (headless Chromium driven by Selenium) on a tiny random WeGen
run: send a prompt and get an image, refine it, upload a reference; bad input gets its message in
the page and the conversation stays. Skips only where no Chromium and chromedriver are installed
(`make test` installs Debian's chromium and chromium-driver)."""

import shutil
import socket
import time

import pytest

from chat_runs import tiny_run, write_png

pytest.importorskip("gradio")
webdriver = pytest.importorskip("selenium.webdriver")
from selenium.webdriver.common.by import By  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
WAIT_S = 240  # the first turn compiles on a busy CPU
# gradio's queue calls pandas options that pandas 3 deprecates
pytestmark = pytest.mark.filterwarnings("ignore:.*(no_silent_downcasting|copy keyword).*")


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
  from wegen_jax.chat.session import ChatSession, load_system
  from wegen_jax.chat.webui import launch

  system = load_system(tiny_run(tmp_path_factory.mktemp("webui_run")))
  folder = tmp_path_factory.mktemp("webui_session")
  session = ChatSession(system, folder, read_root=folder)
  port = _free_port()
  app = launch(session, host="127.0.0.1", port=port, title="test run", block=False)
  try:
    yield f"http://127.0.0.1:{port}/", session
  finally:
    app.close()


@pytest.fixture(scope="module")
def browser():
  if not (CHROMIUM and DRIVER):
    pytest.skip("no Chromium here: apt-get install -y chromium chromium-driver (make test does)")
  from selenium.webdriver.chrome.service import Service

  options = webdriver.ChromeOptions()
  options.binary_location = CHROMIUM
  for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1100,1000"):
    options.add_argument(arg)
  driver = webdriver.Chrome(service=Service(DRIVER), options=options)
  driver.set_page_load_timeout(60)
  try:
    yield driver
  finally:
    driver.quit()


def _wait(predicate, what: str, timeout: float = WAIT_S):
  end = time.monotonic() + timeout
  while time.monotonic() < end:
    try:
      value = predicate()
      if value:
        return value
    except Exception:  # the page re-renders while we look
      pass
    time.sleep(0.5)
  raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def _images(driver) -> int:
  return len(driver.find_elements(By.CSS_SELECTOR, "#chat img"))


def _status(driver) -> str:
  return driver.find_element(By.ID, "status").text


def _send(driver, text: str, button: str = "send"):
  box = driver.find_element(By.CSS_SELECTOR, "#prompt textarea")
  box.clear()
  if text:
    box.send_keys(text)
  driver.find_element(By.ID, button).click()


def test_prompt_refine_and_reference_in_the_browser(served, browser, tmp_path):
  url, session = served
  browser.get(url)
  _wait(lambda: browser.find_elements(By.CSS_SELECTOR, "#prompt textarea"), "the page")
  # an empty prompt: a message, nothing sent
  _send(browser, "")
  _wait(lambda: "empty prompt" in _status(browser), "the empty-prompt message")
  assert session.turns == 0 and _images(browser) == 0

  _send(browser, "a red square at the top left")
  _wait(lambda: _images(browser) >= 1, "the first image")
  assert (session.folder / "turn001_sample0.png").is_file()

  before = _images(browser)
  _send(browser, "make it bigger", button="refine")
  _wait(lambda: _images(browser) >= before + 2, "the refined image (its input shown too)")
  assert (session.folder / "turn002_input0.png").is_file() and (session.folder / "turn002_sample0.png").is_file()

  # a broken upload: its message, and the conversation stays
  broken = tmp_path / "broken.png"
  broken.write_bytes(b"not an image")
  upload = browser.find_element(By.CSS_SELECTOR, "#upload input[type=file]")
  upload.send_keys(str(broken))
  time.sleep(2)
  _send(browser, "like this")
  _wait(lambda: "cannot read" in _status(browser), "the unreadable-image message")
  assert session.turns == 2 and _images(browser) == before + 2
  browser.find_element(By.CSS_SELECTOR, "#upload button[aria-label='Clear']").click()

  ref = write_png(tmp_path / "reference.png", colour=(30, 60, 220))
  browser.find_element(By.CSS_SELECTOR, "#upload input[type=file]").send_keys(str(ref))
  _wait(lambda: "reference" in browser.find_element(By.ID, "upload").text, "the upload")
  count = _images(browser)
  _send(browser, "draw it like this reference")
  _wait(lambda: _images(browser) >= count + 2, "the answer to the reference")
  assert (session.folder / "turn003_input0.png").is_file() and session.turns == 3
  # uploads stay inside the session folder
  uploaded = [p for p in (session.folder / "uploads").rglob("*.png")]
  assert any(p.name == "reference.png" for p in uploaded), uploaded
  browser.save_screenshot(str(tmp_path / "chat.png"))
