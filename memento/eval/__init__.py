"""Accuracy evaluation (`memento eval`): tasks, answer checking, runs with KV statistics per sample."""
