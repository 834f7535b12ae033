"""One module per ``topgan`` command, imported only when the command runs."""
