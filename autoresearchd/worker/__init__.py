"""The worker: one per device, keeping it busy with experiments until the daemon drains."""
