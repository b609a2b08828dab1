"""The face of hospital-refresh: TaskManager (the guide's API), ProgressTracker, CLI, HTTP."""

__all__: list[str] = []
