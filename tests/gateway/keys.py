"""A caller key for tests that drive the gateway app directly (minted in memory, as the platform mints its own)."""

from babylon_assets.gateway.auth import GatewayKeys

TEST_KEYS = GatewayKeys(None)
TOKEN = TEST_KEYS.mint(may_set_clock=True, may_mark_evaluation=True)
AUTH = {"Authorization": f"Bearer {TOKEN}"}
