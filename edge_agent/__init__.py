"""bitfleet edge agent: runs on the boards, trains locally, uploads packed payloads."""
