"""Training, evaluation and export of the landmark model (PyTorch); imports `algorithm`, never the reverse."""
