"""Database layer: SQLAlchemy 2 typed models, sessions, Alembic migrations and queries."""
