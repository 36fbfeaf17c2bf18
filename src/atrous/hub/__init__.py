"""Published trained weights: the registry of checkpoints (with their published figures and
protocols), verified downloads, the conversion cache, and loading any source by name."""
