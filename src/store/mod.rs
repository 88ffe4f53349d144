//! Durable state behind one `Store` trait: SQLite now, PostgreSQL next.
