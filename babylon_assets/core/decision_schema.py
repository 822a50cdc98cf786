"""The JSON schema of one decision at one observation (issue 20): built from the `Decision` model and from the
observation's own choices, so a serving engine that enforces it (llama.cpp, vLLM, OpenAI) can only answer with a
decision that parses and names an offered ticker or market. No Dagster here.

One `anyOf` branch per kind of action. Amounts and leverage are integers (llama.cpp enforces integer bounds but no
bounds on floats); the reasoning is short, with a `maxLength`.
"""

from __future__ import annotations

import json
from typing import Any

from babylon_assets.core.agent_protocol import Observation
from babylon_assets.core.perps import MAX_LEVERAGE

# The schema's version: an evaluation plan's key includes it, so play under another schema (or none) is never reused.
SCHEMA_VERSION = "decision-schema-v1"
REASONING_MAX_CHARS = 160
# A JSON string may spell one character as an escape of up to 6 ("\u00e9"): the answer's bound counts them.
_ESCAPE_WIDTH = 6


def _branch(action: list[str], fields: dict[str, dict[str, Any]]) -> dict[str, Any]:
    properties = {"action": {"type": "string", "enum": action}, **fields}
    properties["reasoning"] = {"type": "string", "maxLength": REASONING_MAX_CHARS}
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties),
        "additionalProperties": False,
    }


def decision_schema(observation: Observation) -> dict[str, Any]:
    """The schema of a decision this observation allows: perps on its tickers, CLOSE of its open positions,
    shares of its prediction markets, or HOLD."""
    cash = max(0, int(observation.cash))
    amount = {"type": "integer", "minimum": 0, "maximum": cash}
    branches = []
    tickers = sorted(observation.prices)
    if tickers:
        branches.append(
            _branch(
                ["OPEN_LONG", "OPEN_SHORT"],
                {
                    "ticker": {"type": "string", "enum": tickers},
                    "amount": amount,
                    "leverage": {"type": "integer", "enum": list(range(1, int(MAX_LEVERAGE) + 1))},
                },
            )
        )
    held = sorted({position.ticker for position in observation.positions})
    if held:
        branches.append(_branch(["CLOSE"], {"ticker": {"type": "string", "enum": held}}))
    markets = sorted(market.market_id for market in observation.predictions)
    if markets:
        branches.append(
            _branch(["BUY_YES", "BUY_NO"], {"marketId": {"type": "string", "enum": markets}, "amount": amount})
        )
    branches.append(_branch(["HOLD"], {}))
    return {"anyOf": branches}


def response_format(observation: Observation) -> dict[str, Any]:
    """The OpenAI `response_format` that asks the engine to enforce `decision_schema`."""
    return {
        "type": "json_schema",
        "json_schema": {"name": "decision", "strict": True, "schema": decision_schema(observation)},
    }


def _longest(schema: dict[str, Any]) -> int:
    """Characters of the longest JSON text one branch allows."""
    parts = []
    for name, rule in schema["properties"].items():
        if "enum" in rule:
            value = max((json.dumps(option) for option in rule["enum"]), key=len)
        elif rule["type"] == "integer":
            value = json.dumps(-abs(rule.get("maximum", 10**18)))  # the sign too, should the engine allow it
        else:
            value = '"' + "x" * rule["maxLength"] * _ESCAPE_WIDTH + '"'
        parts.append(f'"{name}": {value}')
    # Whitespace between tokens is the engine's to choose: allow a few characters of it per field.
    return len("{" + ", ".join(parts) + "}") + 8 * len(parts)


def max_answer_tokens(schema: dict[str, Any]) -> int:
    """A `max_tokens` no answer the schema allows can exceed: its characters (a token is at least one)."""
    return max(_longest(branch) for branch in schema["anyOf"])
