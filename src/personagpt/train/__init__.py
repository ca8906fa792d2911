"""Training: settings (`config`), the loop (`loop`), and checkpoints with their stats (`checkpoints`)."""
