"""The life of an output directory, from the start of a run to its end: what a run may find there when it starts
(`lifecycle`), its identity (`identity`), files written crash-safe and checked when read back (`files`), its
checkpoints and their rotation (`checkpoints`), which checkpoint to resume and whether it fits (`resume`), and the
record that it finished (`lifecycle`)."""
