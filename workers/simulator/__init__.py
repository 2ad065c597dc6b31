"""The project's own Azure serverless Mistral lookalike: see ``workers.simulator.deployment``."""

from workers.simulator.app import BackgroundSimulator, Simulator, serve
from workers.simulator.config import FAULT_KINDS, HEADER_MODES, SimConfig, parse_faults
from workers.simulator.metering import METERINGS, FixedWindows, Meter, SlidingLog, TokenBucket, meter
from workers.simulator.text import fabricate, prompt_digest

__all__ = [
    "FAULT_KINDS",
    "HEADER_MODES",
    "METERINGS",
    "BackgroundSimulator",
    "FixedWindows",
    "Meter",
    "SimConfig",
    "Simulator",
    "SlidingLog",
    "TokenBucket",
    "fabricate",
    "meter",
    "parse_faults",
    "prompt_digest",
    "serve",
]
