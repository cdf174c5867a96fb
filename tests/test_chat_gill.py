"""The chat over a tiny GILL run (issue 22): a message gives the model's text and an image, a later
turn sees the history and can hand back one of its images (retrieval), refine and references work,
the transcript says which image was retrieved (and from where) and which generated, and
`python -m wegen_jax.chat --run RUN` serves the run."""

import io
import json
import sys

import numpy as np
import pytest
from PIL import Image

from chat_runs import write_png
from gill_support import random_gill, tiny_config
from wegen_jax.chat.__main__ import main
from wegen_jax.chat.session import ChatSession, load_system


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  from wegen_jax.systems.runs import save_weights_run
  from wegen_jax.training.task import get_task

  config = tiny_config(max_images=3)  # room for the last answer's image and a reference in the history
  config.sampling.update(num_steps=2, max_new_tokens=4)
  root = tmp_path_factory.mktemp("gill_run")
  save_weights_run(random_gill(get_task(config).model_config), config, root)
  return root


def _log(folder):
  return [json.loads(line) for line in (folder / "transcript.jsonl").read_text().splitlines()]


def test_gill_session_text_image_history_retrieval_and_refine(run, tmp_path, monkeypatch):
  system = load_system(run)
  session = ChatSession(system, tmp_path / "s")
  first = session.send("a red circle")
  assert isinstance(first.text, str) and first.sources == ["generated"] and first.retrieved_from == ""
  assert first.images[0].shape == (32, 32, 3) and first.images[0].dtype == np.uint8
  assert session.history[-1].reply_text == first.text  # GILL writes its text before the image
  seen = []
  generate = system.generate
  monkeypatch.setattr(system, "generate", lambda requests: seen.append(requests[0]) or generate(requests))
  # the second turn: retrieval among the conversation's images (turn 1's answer, this reference)
  ref = write_png(tmp_path / "ref.png", size=(32, 32))
  session.options["mode"] = "retrieve"
  second = session.send("show it again", [ref])
  assert [t.text for t in seen[0].history] == ["a red circle"]
  np.testing.assert_array_equal(seen[0].history[0].reply_images[0], first.images[0])
  assert second.sources == ["retrieved"]
  candidates = {"history turn 0 reply image 0": first.images[0], "input 0": np.asarray(Image.open(ref))}
  np.testing.assert_array_equal(second.images[0], candidates[second.retrieved_from])
  # refine: the kept image is the input, the history is left out; the model decides its answer
  del session.options["mode"]
  third = session.send("make it bigger", refine=True)
  assert seen[-1].history == [] and len(third.images) == 1 and third.sources[0] in ("generated", "retrieved")
  np.testing.assert_array_equal(seen[-1].images[0], second.images[0])
  log = _log(session.folder)
  assert [e["sources"] for e in log[:2]] == [["generated"], ["retrieved"]] and log[2]["refine"]
  assert "retrieved_from" not in log[0] and log[1]["retrieved_from"] == second.retrieved_from
  assert f"sample 0, retrieved from {second.retrieved_from}" in (session.folder / "transcript.md").read_text()
  assert (session.folder / "turn002_input0.png").is_file() and (session.folder / "turn003_sample0.png").is_file()


def test_terminal_main_serves_a_gill_run(run, tmp_path, monkeypatch, capsys):
  assert main(["--run", str(run), "--option", "mode"]) == 2
  assert "write KEY=VALUE" in capsys.readouterr().err
  monkeypatch.setattr(sys, "stdin", io.StringIO("a blue square\nshow it again\n/quit\n"))
  folder = tmp_path / "t"
  assert main(["--run", str(run), "--session", str(folder), "--option", "mode=retrieve"]) == 0
  out = capsys.readouterr().out
  # turn 1 has nothing to retrieve from, so it generates; turn 2 hands back turn 1's image
  assert "sample 0: " in out and "(retrieved from history turn 0 reply image 0)" in out
  assert [e["sources"] for e in _log(folder)] == [["generated"], ["retrieved"]]
  np.testing.assert_array_equal(
    np.asarray(Image.open(folder / "turn002_sample0.png")), np.asarray(Image.open(folder / "turn001_sample0.png"))
  )
