"""Command-line helpers that run before (or beside) Django: the embedded stack (stack.py) and the OHIF build
(ohif.py). They import no app of the project: import-linter checks it (pyproject.toml)."""
