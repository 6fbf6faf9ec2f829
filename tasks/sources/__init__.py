"""CRM and billing connectors that deliver raw text frames, and the validation into canonical frames."""
