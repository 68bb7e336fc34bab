"""The engine: mesh, compiled steps, one fit loop, checkpoints, optimizer; nothing PET-specific."""
