"""Settings, the real-time runner, the results store, metrics, the API and the CLI."""
