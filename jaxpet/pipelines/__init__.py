"""Pipelines: PET, iPET, ensemble merge, distillation, parallel members, MLM warm-up, evaluation."""
