"""The outside world: the LLMService protocol, its errors, and the offline simulated backend.

``llm`` depends on nothing else of the project; the actors depend on it. The system calls
``LLMService.fetch_children(path)`` and gets a validated list of names or an ``LLMError``.
"""

from ._divisions import Divisions
from ._errors import (
    LLMError,
    LLMMalformedOutput,
    LLMRateLimited,
    LLMServerError,
    LLMTimeout,
    PermanentLLMError,
    RetryableLLMError,
)
from ._names import INSTRUCTION_MARKERS, MAX_NAME_LENGTH, validate_names
from ._service import LEVELS, LLMService, Place, child_level
from ._simulated import FAILURE_KINDS, SimulatedLLMService, synthetic_hospitals

__all__ = [
    "FAILURE_KINDS",
    "INSTRUCTION_MARKERS",
    "LEVELS",
    "MAX_NAME_LENGTH",
    "Divisions",
    "LLMError",
    "LLMMalformedOutput",
    "LLMRateLimited",
    "LLMServerError",
    "LLMService",
    "LLMTimeout",
    "PermanentLLMError",
    "Place",
    "RetryableLLMError",
    "SimulatedLLMService",
    "child_level",
    "synthetic_hospitals",
    "validate_names",
]
