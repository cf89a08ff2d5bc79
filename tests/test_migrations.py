"""The Alembic migrations build exactly the schema the SQLAlchemy models declare."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from db.engine import get_engine
from db.models import Base


def test_migrated_schema_matches_the_models(migrated_url):
    with get_engine(migrated_url).connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        diff = compare_metadata(context, Base.metadata)
    assert diff == []
