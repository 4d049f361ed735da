"""Synthetic tasks with exact answers (toy worlds): Memento traces generated in code, for training and scoring toy
models without any download. Below train/ and eval/, which read them through `toy:NAME?n=...` specs."""
