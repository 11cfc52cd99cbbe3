"""Client access: API keys, listen keys. Models arrive with the API issue."""
