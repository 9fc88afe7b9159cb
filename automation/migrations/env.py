"""Alembic environment: runs on the connection handed over by automation.db.migrate()."""

from alembic import context

from automation.models import Base

config = context.config
target_metadata = Base.metadata


def run() -> None:
    connection = config.attributes.get("connection")
    if connection is None:  # `alembic` CLI: build an engine from the configured URL
        from automation.db import make_engine

        with make_engine(config.get_main_option("sqlalchemy.url") or "").connect() as conn:
            _run_on(conn)
            conn.commit()
    else:
        _run_on(connection)


def _run_on(connection) -> None:  # type: ignore[no-untyped-def]
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


run()
