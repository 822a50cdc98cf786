"""The training view as ART trajectories carries no ground truth (DESIGN 5)."""

from babylon_assets.training.art_trajectories import to_art_trajectory
from tests.core.test_views import RULES, W, ground_truth_strings


def test_the_training_view_contains_no_ground_truth(simulated_store):
    truths = ground_truth_strings(simulated_store)
    read = simulated_store.read_window(W, RULES)
    for agent_window in read.eligible:
        trajectory = to_art_trajectory(agent_window, reward=0.5, group_id="g")
        text = trajectory.model_dump_json()
        leaked = [t for t in truths if t in text]
        assert leaked == [], leaked
        assert len(trajectory.additional_histories) == 7 and trajectory.reward == 0.5
        assert all(isinstance(v, (int, float, bool)) for v in trajectory.metrics.values())
        assert trajectory.metadata["agent_window_id"] == agent_window.agent_window_id
