"""The Gradio web front end of a ChatSession (`python -m wegen_jax.chat --run RUN --web`).

One page: the conversation with images inline, a prompt box with Send and Refine (edit the last
image), a reference-image upload, the PSR toggle, the number of samples and the seed. A bar shows
progress while the model samples. It binds 127.0.0.1 unless told otherwise; uploads land in
SESSION/uploads (Gradio's upload folder is pointed there) and the session reads images only inside
its folder; an upload over MAX_IMAGE_BYTES, of another type or unreadable gets a one-line message,
as do an empty prompt and a request while one runs, and the conversation stays as it was.
"""

from __future__ import annotations

import os
from pathlib import Path

from wegen_jax.chat.session import IMAGE_SUFFIXES, MAX_IMAGE_BYTES, MAX_SAMPLES, ChatError, ChatSession

CSS = """
#chat img { image-rendering: pixelated; }
#status { min-height: 1.5em; }
"""
VIEW_SIDE = 160  # smaller images (32 px at tiny) are shown from an enlarged copy in SESSION/view/


def _view(path: Path) -> str:
  """The file to show for `path`: itself, or a nearest-neighbour enlargement when it is small."""
  from PIL import Image

  with Image.open(path) as im:
    if min(im.size) >= VIEW_SIDE:
      return str(path)
    scale = -(-VIEW_SIDE // min(im.size))
    big = im.resize((im.size[0] * scale, im.size[1] * scale), Image.NEAREST)
  out = path.parent / "view" / path.name
  out.parent.mkdir(exist_ok=True)
  big.save(out)
  return str(out)


def build_app(session: ChatSession, title: str = ""):
  """The gr.Blocks app of one session (not launched)."""
  uploads = session.folder / "uploads"
  uploads.mkdir(parents=True, exist_ok=True)
  os.environ["GRADIO_TEMP_DIR"] = str(uploads)  # read when the app is built: uploads stay in the session
  os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
  import gradio as gr

  messages: list[dict] = []

  def user_message(text, files, refine):
    content = [f"{'(refine) ' if refine else ''}{text}"] + [{"path": _view(f)} for f in files]
    return {"role": "user", "content": content}

  def model_message(reply):
    content = [f"prompt {k}: {p}" for k, p in enumerate(reply.prompts)]
    if reply.text and not reply.prompts:
      content.append(reply.text)
    content += [{"path": _view(f)} for f in reply.files] or ["(no image in this answer)"]
    if reply.retrieved_from:
      content.append(f"(retrieved, not generated: {reply.retrieved_from})")
    return {"role": "assistant", "content": content}

  def respond(text, upload, psr, samples, seed, refine, progress=gr.Progress()):
    files = [upload] if upload else []
    try:
      progress(0.1, desc="sampling (the first turn also compiles)")
      reply = session.send(text, files, refine=refine, psr=psr, num_samples=int(samples), seed=_seed(seed, session))
    except ChatError as e:
      gr.Warning(str(e))
      return messages, gr.update(), gr.update(), f"error: {e}"
    progress(1.0)
    shown = [session.folder / f"turn{reply.turn:03d}_input{j}.png" for j in range(int(refine) + len(files))]
    messages.append(user_message(text, shown, refine))
    messages.append(model_message(reply))
    note = f"turn {reply.turn}: {len(reply.files)} image(s) in {reply.seconds:.1f}s, saved in {session.folder}"
    return messages, "", None, note

  def new_conversation():
    session.reset()
    messages.clear()
    return messages, "new conversation"

  with gr.Blocks(title="WeGen chat") as app:
    gr.Markdown(f"## WeGen design copilot\n{title}")
    chat = gr.Chatbot(elem_id="chat", height=560, label="conversation")
    with gr.Row():
      prompt = gr.Textbox(
        elem_id="prompt",
        placeholder="describe an image, or how to change the last one",
        show_label=False,
        scale=5,
        lines=1,
      )
      send = gr.Button("Send", elem_id="send", variant="primary", scale=1)
      refine = gr.Button("Refine last image", elem_id="refine", scale=1)
    with gr.Row():
      upload = gr.File(
        label=f"reference image ({', '.join(IMAGE_SUFFIXES)}, < {MAX_IMAGE_BYTES >> 20} MiB)",
        file_types=list(IMAGE_SUFFIXES),
        type="filepath",
        elem_id="upload",
        scale=2,
      )
      with gr.Column(scale=2):
        psr = gr.Checkbox(session.psr, label="prompt self-rewriting (PSR)", elem_id="psr")
        samples = gr.Slider(1, MAX_SAMPLES, value=session.num_samples, step=1, label="samples", elem_id="samples")
        seed = gr.Number(session.seed, label="seed (turn t uses seed + t)", precision=0, elem_id="seed")
        new = gr.Button("New conversation", elem_id="new", size="sm")
    status = gr.Markdown("", elem_id="status")
    inputs = [prompt, upload, psr, samples, seed]
    outputs = [chat, prompt, upload, status]
    # concurrency_limit=None: a second request reaches the session, which answers 'busy' at once
    for trigger, is_refine in ((send.click, False), (prompt.submit, False), (refine.click, True)):
      trigger(
        lambda *a, r=is_refine: respond(*a, refine=r),
        inputs,
        outputs,
        show_progress="full",
        concurrency_limit=None,
      )
    new.click(new_conversation, None, [chat, status])
  return app


def _seed(value, session: ChatSession):
  """The UI's seed sets the session's base seed; None lets the turn number pick it."""
  if value is not None:
    session.seed = int(value)
  return None


def launch(session: ChatSession, host: str = "127.0.0.1", port: int = 7860, title: str = "", block: bool = True):
  """Builds and serves the app; returns it (block=False: serving in a thread, call app.close())."""
  app = build_app(session, title)
  app.queue(default_concurrency_limit=None)
  app.launch(
    server_name=host,
    server_port=port,
    max_file_size=MAX_IMAGE_BYTES,
    allowed_paths=[str(session.folder)],
    prevent_thread_lock=not block,
    show_error=True,
    quiet=not block,
    css=CSS,
  )
  return app


def serve(session: ChatSession, host: str = "127.0.0.1", port: int = 7860, title: str = ""):
  print(f"serving the chat on http://{host}:{port} (session folder {Path(session.folder)}); Ctrl-C stops it")
  launch(session, host, port, title, block=True)
