"""The ``topgan`` commands that need no more than acquisition: ``reconstruct``,
``simulate`` and ``dataset`` (each registered in pyproject.toml's ``topgan.commands``
entry points)."""
