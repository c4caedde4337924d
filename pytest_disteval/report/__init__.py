"""Reports of a session: the run record, terminal tables, JSON, markdown, HTML, live progress."""
