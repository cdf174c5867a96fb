"""Command-line tools around training: ahead-of-time fit checks (aot) and launch-time
environment checks (envcheck)."""
