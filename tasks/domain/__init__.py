"""Pure domain logic: imports only the standard library, pandas and numpy."""
