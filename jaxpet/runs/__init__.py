"""Run folders: outputs, reports, locks, fingerprints and saved-model cards."""
