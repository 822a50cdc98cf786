"""The rules of on-policy learning (issue 20): what a sampled answer carries, which model version played a group,
and which groups a step may learn from. No Dagster here.

A GRPO group is one window's seats played by one model version. Play by more than one version, by scripts or by an
unversioned model is not a group of the policy's own samples, and a group played by a version more than
`max_steps_off_policy` steps behind the policy being trained is too stale: each is excluded, with its reason.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

# A JSON text's structure as the decision schema fixes it once the action is chosen: keys, braces, colons, commas,
# quotes and the whitespace between them. (The schema's keys come in one order per branch.)
_STRUCTURE = set('{}[]:,"') | set(" \t\n\r")
_NUMBER = set("-+.0123456789eE")

ExclusionReason = Literal["unversioned_play", "mixed_versions", "another_model", "stale_version"]


@dataclass(frozen=True, slots=True)
class SampledAnswer:
    """One answer as the engine sampled it: its token ids, their logprobs under the engine (the behaviour policy mu),
    their texts, the model version that served it, the temperature and whether a schema constrained it."""

    token_ids: tuple[int, ...]
    logprobs: tuple[float, ...]
    pieces: tuple[str, ...]
    model_version: str | None
    temperature: float
    constrained: bool

    @property
    def text(self) -> str:
        """The answer the tokens spell."""
        return "".join(self.pieces)

    def aligned_with(self, response: str) -> bool:
        """Whether these tokens are the recorded response (no token lost, none re-tokenized). llama.cpp may sample a
        markdown fence around the JSON its schema asks for and return only the JSON as the content: the tokens, fence
        included, are what the policy sampled and what it learns on."""
        if not len(self.token_ids) == len(self.logprobs) == len(self.pieces) > 0:
            return False
        text = self.text
        return text == response or (bool(response.strip()) and response.strip() in text)


def sampled_answer(metadata: dict[str, object], response: str, model_version: str | None) -> SampledAnswer | None:
    """The sampled answer a recorded call's metadata holds (the gateway's llm_call_logs.metadata), or None when it
    holds no token ids (an engine that does not report them, a scripted agent) or they do not spell the response."""
    tokens = metadata.get("logprobs")
    if not isinstance(tokens, list) or not tokens:
        return None
    ids, logprobs, pieces = [], [], []
    for token in tokens:
        if not isinstance(token, dict) or not isinstance(token.get("id"), int):
            return None
        ids.append(int(token["id"]))
        logprobs.append(float(token["logprob"]))
        pieces.append(str(token.get("token", "")))
    sampling = metadata.get("sampling")
    sampling = sampling if isinstance(sampling, dict) else {}
    temperature = sampling.get("temperature", 1.0)
    answer = SampledAnswer(
        tuple(ids),
        tuple(logprobs),
        tuple(pieces),
        model_version or _text_or_none(metadata.get("modelVersion")),
        float(temperature) if isinstance(temperature, (int, float)) else 1.0,
        "response_format" in sampling,
    )
    return answer if answer.aligned_with(response) else None


def _text_or_none(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def chosen_tokens(pieces: Sequence[str]) -> list[bool]:
    """Which tokens of a JSON answer the model chose, as opposed to the schema's grammar forcing them.

    A token is forced when every character of it is structure (keys, braces, colons, commas, quotes, whitespace) and
    it does not end a number or a string value (ending one is the model's choice of its length). Values (the action,
    the ticker, digits, the reasoning's words) are chosen, and so is text around the object (a markdown fence). This
    reads the grammar off the text, not off the engine: whitespace, which JSON's grammar allows but never needs,
    counts as structure.
    """
    text = "".join(pieces)
    chosen = [False] * len(text)
    ends_value = [False] * len(text)
    index = 0
    expecting_key = False
    depth_stack: list[str] = []
    while index < len(text):
        char = text[index]
        if char == '"':
            end = index + 1
            while end < len(text) and text[end] != '"':
                end += 2 if text[end] == "\\" else 1
            is_key = expecting_key
            if not is_key:
                for position in range(index + 1, min(end, len(text))):
                    chosen[position] = True
                if end < len(text):
                    ends_value[end] = True  # the closing quote ends a free-length value
            index = end + 1
            expecting_key = False
            continue
        if char in "{[":
            depth_stack.append(char)
            expecting_key = char == "{"
        elif char in "}]":
            if depth_stack:
                depth_stack.pop()
            expecting_key = False
        elif char == ",":
            expecting_key = bool(depth_stack) and depth_stack[-1] == "{"
        elif char == ":":
            expecting_key = False
        elif char in _NUMBER or char.isalpha():  # numbers and true/false/null
            start = index
            while index < len(text) and (text[index] in _NUMBER or text[index].isalpha()):
                chosen[index] = True
                index += 1
            if index < len(text):
                ends_value[index] = True
            if index > start:
                continue
        index += 1
    # Text around the JSON object (a markdown fence the grammar allows but never needs) is the model's choice.
    first, last = text.find("{"), text.rfind("}")
    for position, char in enumerate(text):
        if (first < 0 or position < first or position > last) and char not in _STRUCTURE:
            chosen[position] = True
    mask, position = [], 0
    for piece in pieces:
        span = range(position, position + len(piece))
        mask.append(any(chosen[i] or ends_value[i] for i in span))
        position += len(piece)
    return mask


def base_version(base_model: str) -> str:
    """The version name of a base model's play (as evaluation and rollouts serve it)."""
    return f"base:{base_model}"


_VERSION = re.compile(r"^(?P<name>.+)@(?P<step>\d+)$")


def split_version(version: str) -> tuple[str, int] | None:
    """A checkpoint's version `{model_name}@{step}` as (model name, step); None for anything else (a base, say)."""
    match = _VERSION.match(version)
    return None if match is None else (match.group("name"), int(match.group("step")))


@dataclass(frozen=True, slots=True)
class PolicyVersions:
    """How the policy being trained names its versions: `{model_name}@{step}`, and its base `base_version` (step 0)."""

    model_name: str
    base_version: str

    def step_of(self, version: str | None) -> int | None:
        """The training step of one of this policy's versions (0 for the base), None for any other model."""
        if version is None:
            return None
        if version == self.base_version:
            return 0
        split = split_version(version)
        if split is None or split[0] != self.model_name:
            return None
        return split[1]

    def version_at(self, step: int) -> str:
        """The version name of a step (the base at 0)."""
        return self.base_version if step == 0 else f"{self.model_name}@{step}"


@dataclass(frozen=True, slots=True)
class GroupVerdict:
    """Whether one group may be trained on now: the version that played it, how far behind the policy it is, or why
    not."""

    group_id: str
    version: str | None
    staleness: int | None
    reason: ExclusionReason | None = None

    @property
    def trainable(self) -> bool:
        """No reason against it."""
        return self.reason is None


def judge_group(
    group_id: str,
    versions_by_decision: Iterable[str | None],
    policy: PolicyVersions,
    policy_step: int,
    max_steps_off_policy: int,
) -> GroupVerdict:
    """The verdict on one group, given the version recorded with each of its members' decisions (None: a decision
    without sampled tokens or version, as scripts and the platform's offline play make)."""
    seen = list(versions_by_decision)
    if not seen or any(version is None for version in seen):
        return GroupVerdict(group_id, None, None, "unversioned_play")
    distinct = set(seen)
    if len(distinct) > 1:
        return GroupVerdict(group_id, None, None, "mixed_versions")
    (version,) = distinct
    step = policy.step_of(version)
    if step is None:
        return GroupVerdict(group_id, version, None, "another_model")
    staleness = policy_step - step
    if staleness < 0 or staleness > max_steps_off_policy:
        # A version ahead of the policy cannot be (its checkpoint came from a run this one does not continue).
        return GroupVerdict(group_id, version, staleness, "stale_version")
    return GroupVerdict(group_id, version, staleness)


@dataclass
class GroupAccounting:
    """What the version rules did to a step's groups, for metadata and W&B."""

    trainable: int = 0
    excluded: Counter[str] = field(default_factory=Counter)
    staleness: Counter[int] = field(default_factory=Counter)

    def add(self, verdict: GroupVerdict) -> None:
        """Count one verdict."""
        if verdict.trainable:
            self.trainable += 1
            self.staleness[verdict.staleness or 0] += 1
        else:
            self.excluded[str(verdict.reason)] += 1

    def as_metrics(self) -> dict[str, float]:
        """Flat numbers: groups trained and excluded by reason."""
        metrics = {"groups_on_policy": float(self.trainable)}
        for reason in ("unversioned_play", "mixed_versions", "another_model", "stale_version"):
            metrics[f"groups_excluded_{reason}"] = float(self.excluded.get(reason, 0))
        for staleness, count in sorted(self.staleness.items()):
            metrics[f"groups_staleness_{staleness}"] = float(count)
        return metrics
