"""The experiments: library calls turned into result folders, figures and the paper's runs (see README.md here)."""
