"""Engines, one session scope per unit of work, and Alembic upgrades run from code."""

from __future__ import annotations

import atexit
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.orm import Session, sessionmaker

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def normalise_url(url: str) -> str:
    """Use psycopg 3 for plain ``postgresql://`` URLs."""
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


#: The SQLite files this process opened, checkpointed when it ends (:func:`checkpoint_sqlite_files`).
_sqlite_files: set[str] = set()


def checkpoint_sqlite_files() -> None:
    """Move every SQLite file's write-ahead log into the file (``PRAGMA wal_checkpoint(TRUNCATE)``),
    so that the ``.db`` file alone is the whole database: what a user copies or mails. SQLite
    does this itself when the last connection closes, but a ``cxr`` command ends with
    ``os._exit`` (no connection is closed) and the log would hold every write of the command.
    Registered with :mod:`atexit` when the first SQLite engine is made; best effort (a file
    that another process is reading is checkpointed by whoever closes it last)."""
    import sqlite3

    for path in sorted(_sqlite_files):
        if not Path(path).is_file():  # removed meanwhile (a test's folder): do not create it again
            continue
        try:
            connection = sqlite3.connect(path, timeout=5)
            try:
                connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            finally:
                connection.close()
        except sqlite3.Error:
            pass


@lru_cache(maxsize=16)
def get_engine(url: str) -> Engine:
    """One pooled engine per URL. SQLite gets foreign keys, WAL and a busy timeout so that a
    scoring run and a report run can share the file; its log is checkpointed into the file
    when the process ends (:func:`checkpoint_sqlite_files`)."""
    url = normalise_url(url)
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30})
        if path and path != ":memory:":
            if not _sqlite_files:
                atexit.register(checkpoint_sqlite_files)
            _sqlite_files.add(path)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        return engine
    return create_engine(url, pool_pre_ping=True)


def ping(url: str) -> None:
    """``SELECT 1`` on a pooled connection (raises when the database is unreachable)."""
    with get_engine(url).connect() as connection:
        connection.execute(text("SELECT 1"))


@contextmanager
def session_scope(url: str) -> Iterator[Session]:
    """A transaction: commit on success, roll back on any error."""
    session = sessionmaker(get_engine(url), expire_on_commit=False)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", normalise_url(url).replace("%", "%%"))
    return cfg


@lru_cache(maxsize=1)
def _head_revisions() -> frozenset[str]:
    from alembic.script import ScriptDirectory

    return frozenset(ScriptDirectory.from_config(alembic_config("sqlite://")).get_heads())


def schema_is_current(url: str) -> bool:
    """True when the database at ``url`` is at the newest migration (one query, no Alembic run)."""
    return _current_revisions(url) == _head_revisions()


def displayed_url(url: str) -> str:
    """``url`` as it may be printed: its password masked."""
    from sqlalchemy import make_url

    return make_url(normalise_url(url)).render_as_string(hide_password=True)


def _current_revisions(url: str) -> frozenset[str]:
    from alembic.runtime.migration import MigrationContext

    with get_engine(url).connect() as conn:
        return frozenset(MigrationContext.configure(conn).get_current_heads())


def require_current_schema(url: str, create: bool = False) -> None:
    """Check that the schema at ``url`` is the newest one, without migrating it: only ``cxr db
    upgrade`` (and the first run, ``create``, on a database with no schema yet) changes a
    schema. Otherwise a :class:`~cxrmodel.errors.UserError` says what to run."""
    from cxrmodel.errors import UserError

    current = _current_revisions(url)
    if current == _head_revisions():
        return
    if not current and create:
        command.upgrade(alembic_config(url), "head")
        return
    shown = displayed_url(url)
    state = f"at revision {', '.join(sorted(current))}" if current else "empty (no schema)"
    raise UserError(
        f"the database {shown} is {state}, this code needs {', '.join(sorted(_head_revisions()))}: run cxr db upgrade first"
    )


def upgrade_database(url: str, revision: str = "head") -> None:
    """Bring the schema at ``url`` to ``revision`` (idempotent; a database already at the head
    costs one query, not an Alembic run)."""
    if revision == "head" and schema_is_current(url):
        return
    command.upgrade(alembic_config(url), revision)


class DowngradeRefused(RuntimeError):
    """A downgrade that would lose rows the older schema cannot hold; nothing was changed."""


def downgrade_database(url: str, revision: str) -> None:
    """Downgrade to ``revision`` after asking every revision to be undone whether it can be
    (its module's ``downgrade_refusal(connection) -> str | None``), so a refusal comes before
    any step runs: SQLite's batch rebuilds are not rolled back, a refusal midway would leave a
    half-downgraded file."""
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    config = alembic_config(url)
    script = ScriptDirectory.from_config(config)
    with get_engine(url).connect() as connection:
        current = MigrationContext.configure(connection).get_current_revision()
        if current is not None:
            target = script.get_revision(revision)
            for step in script.iterate_revisions(current, revision):
                if target is not None and step.revision == target.revision:
                    continue
                refusal = getattr(step.module, "downgrade_refusal", None)
                reason = refusal(connection) if refusal is not None else None
                if reason:
                    raise DowngradeRefused(f"cannot downgrade below {step.revision}: {reason}")
    command.downgrade(config, revision)
