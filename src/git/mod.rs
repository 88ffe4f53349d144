//! Git access: fetch a repository into a cache, read a file at a commit,
//! list the paths changed between two commits.
