"""Data: dialogue files and persona lists (`dialogues`), and the tokenized training examples built from them
(`examples`)."""
