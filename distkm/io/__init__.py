"""Reading and writing: distkm stores, datasets, image folders, atomic outputs, run folders, checkpoints."""
