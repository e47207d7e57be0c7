"""Cabinet's built-in templates, installed as the data package ``daemon.templates``.

This file only makes the folder importable, so ``importlib.resources`` finds it
both in an installed wheel and in an editable install (see pyproject.toml).
"""
