"""Who does the work: the supervisor, the Province/City/District actors, the LLM fetch pool and
the journal, all pykka threading actors, wired by :class:`ActorSystem`.

This layer knows ``store``, ``events`` and the ``llm`` protocol.
"""

from ._journal import Journal
from ._levels import CityActor, DistrictActor, LevelActor, ProvinceActor
from ._loop import LoopThread, bridge
from ._messages import CancelTask, CleanupTasks, CreateTask, ResumeTask, StartTask
from ._pool import Dispatcher, FetchActor, describe, is_permanent
from ._retry import RetryPolicy
from ._supervisor import Supervisor, unknown_province_error, validate_request
from ._system import ActorSystem, SystemConfig
from ._tell import safe_tell
from ._view import StatusView

__all__ = [
    "ActorSystem",
    "CancelTask",
    "CityActor",
    "CleanupTasks",
    "CreateTask",
    "Dispatcher",
    "DistrictActor",
    "FetchActor",
    "Journal",
    "LevelActor",
    "LoopThread",
    "ProvinceActor",
    "ResumeTask",
    "RetryPolicy",
    "StartTask",
    "StatusView",
    "Supervisor",
    "SystemConfig",
    "bridge",
    "describe",
    "is_permanent",
    "safe_tell",
    "unknown_province_error",
    "validate_request",
]
