"""Run folders: atomic writes, outputs, reports, locks, fingerprints and saved-model cards."""
