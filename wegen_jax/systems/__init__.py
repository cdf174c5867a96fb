"""Systems: one self-contained package each (`wegen`, `lm`, ...), named by `config.task`.

A package exposes `Task` (what the trainer needs: model, trainable parts, loss, data) and,
where it generates, `System` (what inference entry points need: load a run or released
weights, generate, predict functions for evaluators); see systems/base.py.
"""
