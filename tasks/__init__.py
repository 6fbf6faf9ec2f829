"""Pipeline steps: thin Prefect tasks over pure domain logic and adapters."""
