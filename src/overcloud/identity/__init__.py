"""Identity and security: tokens (api/deps.py today), secret encryption at rest."""
