"""The face of hospital-refresh: TaskManager (the guide's API), ProgressTracker, settings, CLI.

>>> from tasks import TaskManager, ProgressTracker
"""

from llm import LLMService, SimulatedLLMService

from ._config import ConfigError, Settings, default_log_path, load_settings
from ._manager import TaskManager
from ._progress import ProgressCallback, ProgressTracker

__all__ = [
    "ConfigError",
    "LLMService",
    "ProgressCallback",
    "ProgressTracker",
    "Settings",
    "SimulatedLLMService",
    "TaskManager",
    "default_log_path",
    "load_settings",
]
