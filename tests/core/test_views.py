"""The training view carries no ground truth and no other decision's context; the judge view shares one
system message per group."""

from babylon_assets.core.eligibility import EligibilityRules
from babylon_assets.core.market import generate_window_market
from babylon_assets.core.views import (
    decision_conversations,
    judge_messages,
    judge_system_message,
)

W = "2025-01-15T10:00"
RULES = EligibilityRules(min_actions=5, min_agents=5)


def ground_truth_strings(store) -> list[str]:
    """Everything only known after the window closed."""
    market = generate_window_market(7, W, duration_minutes=8)
    truths = [f"resolved {p.outcome}" for p in market.predictions]
    truths += [f"${path[-1]:,.2f}" for path in market.prices.values()]  # closing prices
    outcomes = store.window_outcomes(W)
    truths += [f"{s.change_percent:+}%" for s in outcomes.stocks]
    truths += ["Ground truth", "known only after it closed"]
    # news that was published after the last decision is future knowledge too
    truths += [e.headline for e in market.news if e.step >= market.steps]
    return truths


def test_each_decision_is_its_own_conversation_exactly_as_the_agent_saw_it(simulated_store):
    read = simulated_store.read_window(W, RULES)
    for agent_window in read.eligible:
        conversations = decision_conversations(agent_window)
        assert len(conversations) == agent_window.llm_decisions == 8
        for conversation, step in zip(conversations, agent_window.steps, strict=True):
            call = step.llmCalls[0]
            assert conversation == [
                {"role": "system", "content": call.systemPrompt},
                {"role": "user", "content": call.userPrompt},
                {"role": "assistant", "content": call.response},
            ]
        # no decision's user prompt contains another decision's prompt or answer
        prompts = [c[1]["content"] for c in conversations]
        answers = [c[2]["content"] for c in conversations]
        for i, prompt in enumerate(prompts):
            assert prompt.startswith(f"Minute {i} of the hour")
            assert not any(other in prompt for j, other in enumerate(prompts) if j != i)
            assert not any(answer in prompt for answer in answers)


def test_the_judge_view_shares_one_system_message_with_the_ground_truth(simulated_store):
    read = simulated_store.read_window(W, RULES)
    outcomes = simulated_store.window_outcomes(W)
    views = [judge_messages(aw, "RUBRIC", outcomes) for aw in read.eligible]
    shared = judge_system_message("RUBRIC", outcomes)
    assert all(view[0] == shared for view in views)
    assert "Ground truth of window 2025-01-15T10:00" in shared["content"]
    assert all(f"{s.ticker}: $" in shared["content"] for s in outcomes.stocks)
    assert all(f"resolved {p.outcome}" in shared["content"] for p in outcomes.predictions)
    # then the agent's own prompts and decisions, in order
    first = views[0]
    assert [m["role"] for m in first[1:5]] == ["user", "assistant", "user", "assistant"]
    assert "Minute 0 of the hour" in first[1]["content"] and "Minute 1 of the hour" in first[3]["content"]
