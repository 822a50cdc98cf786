"""Pure logic: windows, parsing, eligibility, outcomes. Nothing here imports Dagster."""
