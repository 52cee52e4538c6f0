"""The platform's own Python code: settings, structured logs and the local-mode service supervisor."""
