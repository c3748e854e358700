"""Database (SQLAlchemy 2.0 typed ORM): stored images and files, the session registry, the engine and the
one session factory."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

from sqlalchemy import (
    Boolean,
    DateTime,
    Engine,
    Float,
    Integer,
    LargeBinary,
    String,
    Text,
    create_engine,
    event,
    inspect,
    text,
)
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker


def utcnow() -> datetime:
    """Timezone-aware now, for created_at."""
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    """Declarative base of this project's tables."""


class StoredBlob:
    """Columns of a stored output (an image or a file): bytes under an unguessable name."""

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    filename: Mapped[str] = mapped_column(String(64), unique=True, index=True)  # unguessable
    original_name: Mapped[str] = mapped_column(String(255))
    mime_type: Mapped[str] = mapped_column(String(128))
    size: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64))
    data: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)


class Image(StoredBlob, Base):
    """An image a program produced, served at /image/<filename>."""

    __tablename__ = "stored_images"


class StoredFile(StoredBlob, Base):
    """A file other than an image that a one-shot program wrote, served at /file/<filename>."""

    __tablename__ = "stored_files"


class SessionRecord(Base):
    """A session: one sandbox kept alive for its owner's cells; the registry every center shares."""

    __tablename__ = "sessions"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # also the container's sandbox label
    owner: Mapped[str] = mapped_column(String(64), index=True)  # sha256 of the creating token ("" without auth)
    node: Mapped[str] = mapped_column(String(255), index=True)  # the center (deployment) that holds it
    container_id: Mapped[str] = mapped_column(String(128))
    socket_dir: Mapped[str] = mapped_column(String(1024))
    program_uid: Mapped[int] = mapped_column(Integer)
    idle_timeout: Mapped[float] = mapped_column(Float)
    execution_count: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    last_active_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    lifetime_ends_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    ended_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True, index=True)
    end_reason: Mapped[str | None] = mapped_column(String(500), nullable=True)
    dead: Mapped[bool] = mapped_column(Boolean, default=False)  # ended because it could not go on
    # What it may reach through the egress proxy: a JSON list of allow-list patterns (None: nothing).
    network: Mapped[str | None] = mapped_column(Text, nullable=True)
    # An E2B sandbox's own facts (server/e2b): JSON {"template", "metadata", "envs", "contexts"}; None for others.
    e2b: Mapped[str | None] = mapped_column(Text, nullable=True)
    # A credential the requests to the session's sandbox itself carry (E2B's envd access token); None: none.
    access_token: Mapped[str | None] = mapped_column(String(64), nullable=True)


class CenterRecord(Base):
    """A center of the deployment: where its peers reach it, and when it last said it was alive."""

    __tablename__ = "centers"

    node: Mapped[str] = mapped_column(String(255), primary_key=True)  # its deployment label (SessionRecord.node)
    url: Mapped[str] = mapped_column(String(255))  # where the other centers forward its sessions' requests
    heartbeat_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


def make_engine(url: str) -> Engine:
    """An engine that checks connections before use; SQLite gets its folder and WAL mode."""
    if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, pool_pre_ping=True, connect_args={"timeout": 15})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection, _record) -> None:  # concurrent readers with one writer
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.close()

        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=10, pool_timeout=10,
                         connect_args={"connect_timeout": 5} if url.startswith("postgresql") else {})


def make_session_factory(engine: Engine) -> sessionmaker:
    """The one sessionmaker of the app; sessions are opened per request and passed down."""
    return sessionmaker(bind=engine, expire_on_commit=False)


def create_tables(engine: Engine) -> None:
    """Create missing tables, and the nullable columns a later version added to a table (idempotent)."""
    Base.metadata.create_all(engine)
    add_missing_columns(engine)


def add_missing_columns(engine: Engine) -> None:
    """ALTER TABLE ... ADD COLUMN for each nullable column the models have and the database lacks: a database
    made by an earlier version keeps its rows. Centers starting together may race; the loser finds it done."""
    for table in Base.metadata.sorted_tables:
        present = {column["name"] for column in inspect(engine).get_columns(table.name)}
        for column in table.columns:
            if column.name in present or not column.nullable:
                continue
            kind = column.type.compile(dialect=engine.dialect)
            try:
                with engine.begin() as connection:
                    connection.execute(text(f'ALTER TABLE {table.name} ADD COLUMN {column.name} {kind}'))
            except SQLAlchemyError:
                if column.name not in {c["name"] for c in inspect(engine).get_columns(table.name)}:
                    raise
