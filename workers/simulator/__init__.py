"""The project's own Azure serverless Mistral lookalike: see ``workers.simulator.app``."""

from workers.simulator.app import BackgroundSimulator, Simulator, serve
from workers.simulator.config import FAULT_KINDS, SimConfig, parse_faults
from workers.simulator.text import fabricate, prompt_digest
from workers.simulator.window import SlidingWindow

__all__ = ["BackgroundSimulator", "FAULT_KINDS", "SimConfig", "Simulator", "SlidingWindow", "fabricate", "parse_faults", "prompt_digest", "serve"]
