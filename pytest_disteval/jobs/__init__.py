"""Jobs: what runs once per session (EvalJob), the scheduler that runs it, and its record."""
