"""Data: corpora, token files and loaders."""
