"""Where ``botkit.flows`` was: bots that import from it run unchanged, with a warning.

The flows live in ``botkit.core.flows``; import ``Flow``, ``Delivery`` and ``normalize`` from
``botkit`` itself (``from botkit import Flow, normalize``).
"""

from __future__ import annotations

import warnings

from botkit.core.flows import Delivery, Flow, FlowSet, Step, normalize

__all__ = ["Delivery", "Flow", "FlowSet", "Step", "normalize"]

warnings.warn("botkit.flows moved: import Flow, Delivery and normalize from botkit"
              " (from botkit import Flow, normalize)", DeprecationWarning, stacklevel=2)
