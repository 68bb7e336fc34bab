"""The T5 text-to-text pipeline: run, tasks, readers, metrics, config."""
