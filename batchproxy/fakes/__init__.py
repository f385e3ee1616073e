"""Stand-ins for upstream providers: test and try-out equipment, never imported by the engine."""
