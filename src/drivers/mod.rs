//! How convoy talks to an environment: `http-agent` and `command`, behind one
//! trait.
