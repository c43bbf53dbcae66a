"""The tracker: `registry` (pure bookkeeping) and `server` (asyncio)."""
