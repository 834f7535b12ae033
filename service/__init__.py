"""Settings, the real-time runner, the results store, metrics, the API, ``topgan serve``
and the ``topgan`` entry point."""
