"""The face of hospital-refresh: TaskManager (the guide's API), ProgressTracker, settings, CLI,
and the HTTP service (``create_app``).

>>> from tasks import TaskManager, ProgressTracker
"""

from typing import TYPE_CHECKING, Any

from llm import LLMService, SimulatedLLMService

from ._config import ConfigError, Settings, default_log_path, load_settings
from ._manager import TaskManager
from ._progress import ProgressCallback, ProgressTracker

if TYPE_CHECKING:
    from ._http import create_app

__all__ = [
    "ConfigError",
    "LLMService",
    "ProgressCallback",
    "ProgressTracker",
    "Settings",
    "SimulatedLLMService",
    "TaskManager",
    "create_app",
    "default_log_path",
    "load_settings",
]


def __getattr__(name: str) -> Any:
    """``create_app`` is imported on first use: FastAPI loads only for those who serve."""
    if name == "create_app":
        from ._http import create_app

        return create_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
