"""Chat with a trained model: `python -m wegen_jax.chat --run RUN` (terminal) or `--web` (Gradio UI).

session.py holds the conversation, turns it into requests and saves images and the transcript;
terminal.py and webui.py are its two front ends (docs/CHAT.md).
"""
