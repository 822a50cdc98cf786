"""From checkpoint to served model: held-out evaluation, the gate, deploy and rollback, the history report."""
