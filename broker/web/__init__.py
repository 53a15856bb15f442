"""The operator dashboard: server-rendered pages served by the API process."""
