"""The camera loop: ``frame_queue`` (the bounded queue between the grab thread and
the workers), ``workers`` (the frame processor in a thread or a child process),
``runner`` (the loop itself) and ``states`` (its states, error reasons and counts,
shared with the metrics and the HTTP schemas).

The package imports nothing itself, so that ``states`` can be imported by the
metrics without the runner."""
