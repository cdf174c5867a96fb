"""The chat library on a tiny random WeGen run: turns become requests (history, refine, references,
PSR, samples), every image and the transcript are saved, bad input is one message that leaves the
session as it was, and the terminal front end drives it all."""

import json

import numpy as np
import pytest
from PIL import Image

from chat_runs import tiny_run, write_png
from wegen_jax.chat.session import ChatError, ChatSession, load_system
from wegen_jax.chat.terminal import run_terminal


@pytest.fixture(scope="module")
def system(tmp_path_factory):
  return load_system(tiny_run(tmp_path_factory.mktemp("chat_run")))


def test_turns_refine_and_references_are_saved_with_the_transcript(system, tmp_path):
  session = ChatSession(system, tmp_path / "s")
  first = session.send("a red square at the top left")
  assert first.turn == 1 and len(first.images) == 1 and first.files[0].name == "turn001_sample0.png"
  assert first.images[0].dtype == np.uint8 and first.images[0].shape == (16, 16, 3)
  # PSR with 2 samples: two rewritten prompts, two images; the history keeps the first sample
  second = session.send("a red square", psr=True, num_samples=2)
  assert len(second.images) == 2 and len(second.prompts) == 2
  assert session.history[-1].text.endswith("a red square") and session.history[-1].text != "a red square"
  session.pick(1)
  np.testing.assert_array_equal(session.history[-1].reply_images[0], second.images[1])
  # refine: the kept sample is the input image, the older turns are left out
  ref = write_png(tmp_path / "ref.png")
  third = session.send("make it bigger", [ref], refine=True)
  np.testing.assert_array_equal(session.history[0].images[0], second.images[1])
  assert len(session.history) == 1 and len(session.history[0].images) == 2
  folder = session.folder
  assert (folder / "turn003_input0.png").is_file() and (folder / "turn003_input1.png").is_file()
  assert third.files[0] == folder / "turn003_sample0.png" and third.files[0].is_file()
  log = [json.loads(line) for line in (folder / "transcript.jsonl").read_text().splitlines()]
  turns = [e for e in log if "text" in e]
  assert [e["turn"] for e in turns] == [1, 2, 3] and turns[1]["psr"] and turns[2]["refine"]
  assert turns[1]["images"] == ["turn002_sample0.png", "turn002_sample1.png"] and len(turns[1]["prompts"]) == 2
  assert {"event": "pick", "turn": 2, "kept": 1} in log
  assert "turn003_sample0.png" in (folder / "transcript.md").read_text()
  # a new session object on the same folder numbers on after the saved turns
  assert ChatSession(system, folder).turns == 3


def test_bad_input_is_one_message_and_keeps_the_session(system, tmp_path):
  session = ChatSession(system, tmp_path / "s", read_root=tmp_path / "s")
  with pytest.raises(ChatError, match="nothing to refine"):
    session.send("bigger", refine=True)
  session.send("a blue circle")
  before = (list(session.history), session.turns, (session.folder / "transcript.jsonl").read_text())
  (session.folder / "broken.png").write_bytes(b"not a png")
  write_png(session.folder / "wide.png", size=(4200, 2))
  (session.folder / "notes.txt").write_text("hi")
  outside = write_png(tmp_path / "outside.png")
  cases = {
    "empty prompt": ("  ", []),
    "cannot read": ("x", [session.folder / "broken.png"]),
    "4200x2 px": ("x", [session.folder / "wide.png"]),
    "not an image file": ("x", [session.folder / "notes.txt"]),
    "outside the session folder": ("x", [outside]),
    "no image at": ("x", [session.folder / "missing.png"]),
  }
  for message, (text, images) in cases.items():
    with pytest.raises(ChatError, match=message):
      session.send(text, images)
  with pytest.raises(ChatError, match="choose 1 to 8"):
    session.send("x", num_samples=9)
  session._lock.acquire()  # a request is running
  try:
    with pytest.raises(ChatError, match="busy"):
      session.send("a green cross")
  finally:
    session._lock.release()
  assert (list(session.history), session.turns, (session.folder / "transcript.jsonl").read_text()) == before


def test_terminal_commands_drive_the_session(system, tmp_path):
  session = ChatSession(system, tmp_path / "s")
  ref = write_png(tmp_path / "ref.png")
  out = []
  # (the same request shapes as the first test: no new compiles)
  lines = ["/psr on", "/samples 2", "a red square", "/pick 1", "/psr off", "/samples 1", f"/image {ref}"]
  lines += ["/refine move it left", "", "/image", "/samples 99", "/pick 5", "/wat", "/new", "/quit"]
  answered = run_terminal(session, lines + ["never sent"], out.append)
  text = "\n".join(out)
  assert answered == 2 and session.turns == 2 and session.history == []
  assert "prompt 1:" in text and "keeping sample 1" in text and "attached 1 image(s)" in text
  for error in ("/image needs a path", "/samples 99: choose 1 to 8", "no sample 5", "unknown command /wat"):
    assert f"error: {error}" in text
  # the refine turn's inputs: the kept sample 1 of turn 1, then the attached reference
  kept = np.asarray(Image.open(session.folder / "turn001_sample1.png"))
  np.testing.assert_array_equal(np.asarray(Image.open(session.folder / "turn002_input0.png")), kept)
  assert (session.folder / "turn002_input1.png").is_file() and (session.folder / "turn002_sample0.png").is_file()


def test_generate_images_passes_each_prompts_guidance_to_the_detokenizer(system, monkeypatch):
  """FID (guidance 2) and CLIP-T (guidance 7) runs set the guidance per prompt (evaluators' options)."""
  import wegen_jax.systems.wegen.system as wegen_system

  seen = []

  class Stop(Exception):
    pass

  def recording_generate(*args, image_sampling, **kwargs):
    seen.append(image_sampling.guidance_scale)
    raise Stop

  monkeypatch.setattr(wegen_system, "generate", recording_generate)
  generate_images = system.predict_fns()["generate_images"]
  for prompt in ({"text": "a red circle.", "options": {"guidance_scale": 2.0}}, {"text": "a red circle."}):
    with pytest.raises(Stop):
      generate_images([prompt])
  assert seen == [2.0, system.config.sampling.guidance_scale]
