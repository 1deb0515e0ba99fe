"""The life of an output directory: crash-safe checkpoints and their manifests (`checkpoints`), which checkpoint to
resume and whether it fits this run (`resume`)."""
