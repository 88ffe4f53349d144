//! Slash commands: a pure, Markdown-aware parser and the command table that
//! also generates `/convoy help`.
