"""The outside world: the LLMService protocol, its errors, the offline simulated backend, the
OpenAI-compatible HTTP backend with its provider presets, and the check of names against GB/T 2260.

``llm`` takes only the level names from ``events``; the actors depend on it. The system calls
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
from ._openai import API_KEY_ENV, MAX_RETRY_AFTER, OpenAICompatibleLLMService
from ._providers import PROVIDERS, Provider, get_provider
from ._service import LEVELS, LLMService, Place, child_level
from ._simulated import FAILURE_KINDS, SimulatedLLMService, synthetic_hospitals
from ._usage import Names, Usage, usage_of
from ._verify import CHECKED_LEVELS, UNVERIFIED, check_names

__all__ = [
    "API_KEY_ENV",
    "CHECKED_LEVELS",
    "FAILURE_KINDS",
    "INSTRUCTION_MARKERS",
    "LEVELS",
    "MAX_NAME_LENGTH",
    "MAX_RETRY_AFTER",
    "PROVIDERS",
    "UNVERIFIED",
    "Divisions",
    "LLMError",
    "LLMMalformedOutput",
    "LLMRateLimited",
    "LLMServerError",
    "LLMService",
    "LLMTimeout",
    "Names",
    "OpenAICompatibleLLMService",
    "PermanentLLMError",
    "Place",
    "Provider",
    "RetryableLLMError",
    "SimulatedLLMService",
    "Usage",
    "check_names",
    "child_level",
    "get_provider",
    "synthetic_hospitals",
    "usage_of",
    "validate_names",
]
